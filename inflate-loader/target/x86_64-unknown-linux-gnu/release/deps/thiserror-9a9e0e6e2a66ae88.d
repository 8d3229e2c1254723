/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/thiserror-9a9e0e6e2a66ae88.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/aserror.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/display.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/var.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/private.rs /work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/build/thiserror-6beb8c6684513883/out/private.rs

/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/libthiserror-9a9e0e6e2a66ae88.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/aserror.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/display.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/var.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/private.rs /work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/build/thiserror-6beb8c6684513883/out/private.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/aserror.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/display.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/var.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/thiserror-2.0.21/src/private.rs:
/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/build/thiserror-6beb8c6684513883/out/private.rs:

# env-dep:OUT_DIR=/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/build/thiserror-6beb8c6684513883/out
