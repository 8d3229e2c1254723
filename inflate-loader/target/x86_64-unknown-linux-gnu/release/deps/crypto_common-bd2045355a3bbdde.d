/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/crypto_common-bd2045355a3bbdde.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/crypto-common-0.1.7/src/lib.rs

/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/libcrypto_common-bd2045355a3bbdde.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/crypto-common-0.1.7/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/crypto-common-0.1.7/src/lib.rs:
