//! The CRI log-file source: `/var/log/pods/<namespace>_<pod>_<uid>/<container>/`, as
//! containerd and CRI-O write it for the kubelet.
//!
//! placeholder: filled in below.

mod follow;
mod join;
mod parse;
mod path;
mod position;
mod reader;

pub use follow::{DirWatcher, FollowOptions, Follower};
pub use join::{CriRecord, Joiner};
pub use parse::{Entry, Header, ParseError, parse_entry, parse_header};
pub use path::{LogFileName, PodLogDir};
pub use position::{ENCODED_LEN, FileId, FilePosition, fingerprint};
pub use reader::{Batch, CriError, DirReader, Missing, ReadOptions, Start};
