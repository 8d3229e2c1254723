//! Fuzz the xl save image reader and importer (`xen-inspect`, `xen-import`). Every input
//! must end in Ok or an error, never a panic or an allocation beyond what the input holds
//! (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch those); an image that imports must
//! become a checkpoint stream that the stream's own decoder accepts, and exporting that
//! checkpoint must not panic.
#![no_main]

use checkpoint_stream::model::FullCheckpoint;
use checkpointd::xen::{export, image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = image::parse(data) else { return };
    let _ = img.libxc_layout();
    for (scramble_mfns, drop_shared_info) in [(false, false), (true, true)] {
        let opts = image::ImportOptions {
            scramble_mfns,
            drop_shared_info,
        };
        let Ok(c) = img.to_checkpoint_with(opts) else {
            continue;
        };
        let bytes = c.write_to(Vec::new()).expect("writing to memory");
        let back = FullCheckpoint::from_bytes(&bytes);
        assert!(
            back.is_ok(),
            "imported checkpoint refused by the decoder: {:?}",
            back.err()
        );
        let _ = export(&c, "name = \"f\"\n", (4, 17), std::io::sink());
    }
});
