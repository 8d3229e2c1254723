/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/byteorder-eada1fd23e68da6b.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/byteorder-1.5.0/src/lib.rs

/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/libbyteorder-eada1fd23e68da6b.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/byteorder-1.5.0/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/byteorder-1.5.0/src/lib.rs:
