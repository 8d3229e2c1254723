//! checkpointd's library part: the xl save image writer and reader (`xen`), shared by the
//! command line tool and the `xl_image` fuzz target (checkpointd/fuzz).
pub mod xen;
