/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/inflate_loader-3ef883bc77546acb.d: src/main.rs src/console.rs src/entry.rs src/events.rs src/gnttab.rs src/hypercall.rs src/memfuncs.rs src/mm.rs src/net.rs src/netfront.rs src/startinfo.rs src/xenstore.rs

/work/wt-foundations/inflate-loader/target/x86_64-unknown-linux-gnu/release/deps/libinflate_loader-3ef883bc77546acb.rmeta: src/main.rs src/console.rs src/entry.rs src/events.rs src/gnttab.rs src/hypercall.rs src/memfuncs.rs src/mm.rs src/net.rs src/netfront.rs src/startinfo.rs src/xenstore.rs

src/main.rs:
src/console.rs:
src/entry.rs:
src/events.rs:
src/gnttab.rs:
src/hypercall.rs:
src/memfuncs.rs:
src/mm.rs:
src/net.rs:
src/netfront.rs:
src/startinfo.rs:
src/xenstore.rs:
