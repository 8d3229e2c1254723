/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/bitflags-e138a61d1b9bc806.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bitflags-1.3.2/src/lib.rs

/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/libbitflags-e138a61d1b9bc806.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bitflags-1.3.2/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bitflags-1.3.2/src/lib.rs:
