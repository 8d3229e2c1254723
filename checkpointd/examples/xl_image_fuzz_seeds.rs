//! Writes seed inputs for the xl image fuzz target (scripts/fuzz-xl-image): small but
//! structurally real xl save images of the exporter's sample guest (64 pfns, so seeds stay small), one with a JSON config.
//! `cargo run -p checkpointd --example xl_image_fuzz_seeds -- DIR`.

use checkpointd::xen::{export, sample};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: xl_image_fuzz_seeds DIR");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, cfg) in [("text", "name = \"seed\"\n"), ("json", "{\"c_info\": {}}")] {
        let mut v = Vec::new();
        export(&sample::guest_up_to(63), cfg, (4, 17), &mut v).unwrap();
        std::fs::write(format!("{dir}/seed-{name}.img"), v).unwrap();
    }
}
