//! The thin I/O shell around the core (feature `fs`): files on local disk.

mod files;

pub use files::{FileSink, artifact_of, file_name};
