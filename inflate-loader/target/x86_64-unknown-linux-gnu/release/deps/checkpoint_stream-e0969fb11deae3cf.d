/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/checkpoint_stream-e0969fb11deae3cf.d: /work/wt-foundations/checkpoint-stream/src/lib.rs /work/wt-foundations/checkpoint-stream/src/crc.rs /work/wt-foundations/checkpoint-stream/src/decode.rs /work/wt-foundations/checkpoint-stream/src/digest.rs /work/wt-foundations/checkpoint-stream/src/encode.rs /work/wt-foundations/checkpoint-stream/src/format.rs

/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/libcheckpoint_stream-e0969fb11deae3cf.rmeta: /work/wt-foundations/checkpoint-stream/src/lib.rs /work/wt-foundations/checkpoint-stream/src/crc.rs /work/wt-foundations/checkpoint-stream/src/decode.rs /work/wt-foundations/checkpoint-stream/src/digest.rs /work/wt-foundations/checkpoint-stream/src/encode.rs /work/wt-foundations/checkpoint-stream/src/format.rs

/work/wt-foundations/checkpoint-stream/src/lib.rs:
/work/wt-foundations/checkpoint-stream/src/crc.rs:
/work/wt-foundations/checkpoint-stream/src/decode.rs:
/work/wt-foundations/checkpoint-stream/src/digest.rs:
/work/wt-foundations/checkpoint-stream/src/encode.rs:
/work/wt-foundations/checkpoint-stream/src/format.rs:
