//! The CRI log-file source: `/var/log/pods/<namespace>_<pod>_<uid>/<container>/`, as
//! containerd and CRI-O write it for the kubelet.
//!
//! One [`Follower`] per container log directory ([`PodLogDir::parse`] gives the pod's
//! namespace, name and uid and the container's name from the path; the restart count is
//! in each file's name, [`FilePosition::restart`]). It reads the directory's files
//! oldest first — per restart, the rotated `N.log.<timestamp>` files, then `N.log` —
//! and yields [`Batch`]es of [`CriRecord`]s: the stream, the runtime's timestamp, the
//! message (`P` entries joined, cut and flagged `truncated` past `max_line_bytes`,
//! invalid UTF-8 replaced) and the [`FilePosition`] right after the record.
//!
//! **Positions.** A position is a file by identity (device, inode, and a CRC of its first
//! line against inode reuse) and the byte offset of the first line still to be read, plus
//! what a line in progress on the other stream needs (see [`FilePosition`]). It is
//! `Copy`, and [`FilePosition::encode`] gives [`ENCODED_LEN`] bytes for a checkpoint
//! slot. `Follower::open(dir, Start::At(p), ..)` resumes exactly after the record `p`
//! came with: nothing repeated, nothing lost. Positions of one file grow with `offset`;
//! across files, the later file (in the order above) is further on. A line that is not
//! complete at the end of what is written (no newline yet, or its `F` not yet written) is
//! not consumed: the position stays before it until it ends.
//!
//! **Rotation.** The kubelet renames `N.log` to `N.log.<timestamp>` and has the runtime
//! reopen `N.log`; the follower keeps reading the renamed file by its open handle, and
//! moves on to the next file once the runtime writes there and
//! [`ReadOptions::rotate_grace`] has passed (containerd moves stdout and stderr over one
//! after the other), reading the old file to its end once more first. A container that exited is read
//! to its end with [`Follower::read_to_end`], which moves on without waiting for writes.
//! New data and new files are noticed through one agent-wide inotify instance
//! ([`DirWatcher`]; the directory is listed again only after a create, rename or delete
//! in it, at the end of the current file), with a poll every [`FollowOptions::poll`] as a
//! fallback (the only way when inotify cannot be had).
//!
//! **Missing files.** When the file of a position is no longer there to be read (deleted,
//! compressed to `.gz` by the kubelet, or its inode reused), `open` reports [`Missing`]
//! (`Compressed` when compressed rotated files are beside it, else `Deleted`) and goes on
//! at the oldest file left of the same or a later restart: what was unread in the missing
//! file is lost to this lane — count it as `rotated`. The follower never reads `.gz`
//! files. Lines the follower could not parse are skipped and counted in
//! [`Batch::malformed`].
//!
//! **Known limit.** The runtime may reopen its log in the middle of a long line (its `P`
//! entries in the old file, its `F` in the new one); the line is joined whole while
//! reading goes on, but a resume from a position taken before that line ended reads only
//! its part in the new file.

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
pub use reader::{Batch, CriError, DirReader, Missing, ROTATE_GRACE, ReadOptions, Start};
