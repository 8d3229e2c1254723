/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/inflate_core-e38a7e56731258d1.d: /work/wt-foundations/inflate-core/src/lib.rs /work/wt-foundations/inflate-core/src/cmdline.rs /work/wt-foundations/inflate-core/src/frames.rs /work/wt-foundations/inflate-core/src/receive.rs /work/wt-foundations/inflate-core/src/result.rs /work/wt-foundations/inflate-core/src/xs.rs

/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/libinflate_core-e38a7e56731258d1.rmeta: /work/wt-foundations/inflate-core/src/lib.rs /work/wt-foundations/inflate-core/src/cmdline.rs /work/wt-foundations/inflate-core/src/frames.rs /work/wt-foundations/inflate-core/src/receive.rs /work/wt-foundations/inflate-core/src/result.rs /work/wt-foundations/inflate-core/src/xs.rs

/work/wt-foundations/inflate-core/src/lib.rs:
/work/wt-foundations/inflate-core/src/cmdline.rs:
/work/wt-foundations/inflate-core/src/frames.rs:
/work/wt-foundations/inflate-core/src/receive.rs:
/work/wt-foundations/inflate-core/src/result.rs:
/work/wt-foundations/inflate-core/src/xs.rs:
