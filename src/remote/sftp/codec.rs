//! The SFTP version 3 wire format (draft-ietf-secsh-filexfer-02), pure: values
//! to bytes and bytes to values, no I/O. Handles and names stay byte strings
//! end to end; nothing a server declares (counts, lengths) sizes memory beyond
//! the frame that carries it, and every frame is bounded by [`MAX_PACKET`].

use bytes::{Buf, Bytes};

/// The protocol version we speak.
pub const VERSION: u32 = 3;
/// Largest reply frame we accept (payload after the length). OpenSSH's own
/// limit is 256 KiB; we allow more for servers that batch READDIR generously,
/// but never what a lying length prefix asks for.
pub const MAX_PACKET: u32 = 1 << 20;
/// Largest handle a server may give us (the protocol says 256 bytes).
pub const MAX_HANDLE: usize = 256;

mod fxp {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const LSTAT: u8 = 7;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;
/// `SSH_FXF_READ`.
const OPEN_READ: u32 = 0x1;

/// An SFTP status code (`SSH_FX_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// 0: success.
    Ok,
    /// 1: end of file or of a listing.
    Eof,
    /// 2: no such file or directory.
    NoSuchFile,
    /// 3: permission denied.
    PermissionDenied,
    /// 4: generic failure.
    Failure,
    /// 5: the server could not parse our request.
    BadMessage,
    /// 8: the server does not support the operation.
    OpUnsupported,
    /// Anything else (v3 defines 0-8; later drafts more).
    Other(u32),
}

impl StatusCode {
    fn from_u32(c: u32) -> StatusCode {
        match c {
            0 => StatusCode::Ok,
            1 => StatusCode::Eof,
            2 => StatusCode::NoSuchFile,
            3 => StatusCode::PermissionDenied,
            4 => StatusCode::Failure,
            5 => StatusCode::BadMessage,
            8 => StatusCode::OpUnsupported,
            n => StatusCode::Other(n),
        }
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusCode::Ok => f.write_str("ok"),
            StatusCode::Eof => f.write_str("end of file"),
            StatusCode::NoSuchFile => f.write_str("no such file"),
            StatusCode::PermissionDenied => f.write_str("permission denied"),
            StatusCode::Failure => f.write_str("failure"),
            StatusCode::BadMessage => f.write_str("bad message"),
            StatusCode::OpUnsupported => f.write_str("operation unsupported"),
            StatusCode::Other(n) => write!(f, "status {n}"),
        }
    }
}

/// What a file is, from the permission bits' `S_IFMT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symlink.
    Symlink,
    /// Device, FIFO, socket, or no permissions sent.
    Other,
}

/// File attributes (the parts we use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Size in bytes, when sent.
    pub size: Option<u64>,
    /// Permission bits with the file type, when sent.
    pub permissions: Option<u32>,
    /// Modification time (seconds since the epoch), when sent.
    pub mtime: Option<u32>,
}

impl Attrs {
    /// The type encoded in the permissions.
    pub fn kind(&self) -> FileKind {
        match self.permissions.map(|p| p & 0o170000) {
            Some(0o100000) => FileKind::File,
            Some(0o040000) => FileKind::Dir,
            Some(0o120000) => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

/// One entry of a NAME reply (the `longname` is dropped: it is for humans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    /// The file name, exactly as the server sent it.
    pub name: Vec<u8>,
    /// Its attributes.
    pub attrs: Attrs,
}

/// A request we send.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// `SSH_FXP_OPEN` for reading.
    OpenRead(&'a [u8]),
    /// `SSH_FXP_CLOSE`.
    Close(&'a [u8]),
    /// `SSH_FXP_READ`.
    Read {
        /// File handle.
        handle: &'a [u8],
        /// Offset.
        offset: u64,
        /// Bytes asked for.
        len: u32,
    },
    /// `SSH_FXP_LSTAT`.
    Lstat(&'a [u8]),
    /// `SSH_FXP_OPENDIR`.
    Opendir(&'a [u8]),
    /// `SSH_FXP_READDIR`.
    Readdir(&'a [u8]),
    /// `SSH_FXP_EXTENDED` (`name`, then extension-specific data).
    Extended {
        /// Extension name, e.g. `limits@openssh.com`.
        name: &'a str,
        /// Its payload.
        data: &'a [u8],
    },
}

/// A reply the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `SSH_FXP_STATUS`.
    Status {
        /// Code.
        code: StatusCode,
        /// The server's message (lossy UTF-8, for logs only).
        message: String,
    },
    /// `SSH_FXP_HANDLE`: an opaque byte string.
    Handle(Vec<u8>),
    /// `SSH_FXP_DATA`.
    Data(Bytes),
    /// `SSH_FXP_NAME`.
    Name(Vec<NameEntry>),
    /// `SSH_FXP_ATTRS`.
    Attrs(Attrs),
    /// `SSH_FXP_EXTENDED_REPLY`.
    Extended(Bytes),
}

/// The server's `SSH_FXP_VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The version it speaks.
    pub version: u32,
    /// Extension (name, data) pairs.
    pub extensions: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Version {
    /// Whether extension `name` is offered.
    pub fn has(&self, name: &str) -> bool {
        self.extensions.iter().any(|(n, _)| n == name.as_bytes())
    }
}

/// `limits@openssh.com`: what the server accepts (0 = no limit stated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Largest packet.
    pub max_packet: u64,
    /// Largest READ it serves in one reply.
    pub max_read: u64,
    /// Largest WRITE.
    pub max_write: u64,
    /// Open handles at once.
    pub max_open_handles: u64,
}

/// The server sent bytes that are not SFTP v3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field ran past the end of its frame.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A packet type we never asked for.
    #[error("unexpected packet type {0}")]
    UnknownType(u8),
    /// Bytes left over after a complete reply.
    #[error("{0} trailing bytes after a reply")]
    Trailing(usize),
    /// A handle longer than the protocol allows.
    #[error("handle of {0} bytes (at most 256 allowed)")]
    HandleTooLong(usize),
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Our own requests: paths come from validated config and listings (< 64 KiB),
    // handles are <= 256 bytes; a longer one cannot be framed and is cut, so the
    // server answers with an error instead of us sending a corrupt frame.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    put_u32(out, len);
    out.extend_from_slice(&b[..len as usize]);
}

/// Appends the INIT frame (length prefix included).
pub fn encode_init(out: &mut Vec<u8>) {
    put_u32(out, 5);
    out.push(fxp::INIT);
    put_u32(out, VERSION);
}

/// Appends request `req` with id `id` as one frame (length prefix included).
pub fn encode(id: u32, req: &Request<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    put_u32(out, 0);
    let (kind, arg) = match *req {
        Request::OpenRead(p) => (fxp::OPEN, p),
        Request::Close(h) => (fxp::CLOSE, h),
        Request::Read { handle, .. } => (fxp::READ, handle),
        Request::Lstat(p) => (fxp::LSTAT, p),
        Request::Opendir(p) => (fxp::OPENDIR, p),
        Request::Readdir(h) => (fxp::READDIR, h),
        Request::Extended { name, .. } => (fxp::EXTENDED, name.as_bytes()),
    };
    out.push(kind);
    put_u32(out, id);
    put_bytes(out, arg);
    match *req {
        Request::OpenRead(_) => {
            put_u32(out, OPEN_READ);
            put_u32(out, 0); // no attributes
        }
        Request::Read { offset, len, .. } => {
            out.extend_from_slice(&offset.to_be_bytes());
            put_u32(out, len);
        }
        Request::Extended { data, .. } => out.extend_from_slice(data),
        _ => {}
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// A bounds-checked reader over one frame.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u8())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        if self.buf.remaining() < 8 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u64())
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u32(what)? as usize;
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.split_to(n))
    }

    fn attrs(&mut self) -> Result<Attrs, DecodeError> {
        let flags = self.u32("attribute flags")?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64("size")?);
        }
        if flags & ATTR_UIDGID != 0 {
            self.u32("uid")?;
            self.u32("gid")?;
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32("permissions")?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            self.u32("atime")?;
            a.mtime = Some(self.u32("mtime")?);
        }
        if flags & ATTR_EXTENDED != 0 {
            // Each pair takes at least 8 bytes of this frame, so the count is
            // bounded by the frame, whatever it declares.
            let n = self.u32("extended count")?;
            for _ in 0..n {
                self.bytes("extended type")?;
                self.bytes("extended data")?;
            }
        }
        Ok(a)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.buf.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Decodes the VERSION reply (`frame` is the payload after the length prefix).
///
/// # Errors
/// [`DecodeError`] when it is not a well-formed VERSION.
pub fn decode_version(frame: Bytes) -> Result<Version, DecodeError> {
    let mut r = Reader { buf: frame };
    let t = r.u8("packet type")?;
    if t != fxp::VERSION {
        return Err(DecodeError::UnknownType(t));
    }
    let version = r.u32("version")?;
    let mut extensions = Vec::new();
    while r.buf.has_remaining() {
        let name = r.bytes("extension name")?;
        let data = r.bytes("extension data")?;
        extensions.push((name.to_vec(), data.to_vec()));
    }
    Ok(Version { version, extensions })
}

/// Decodes a reply frame (payload after the length prefix) into its request id
/// and value. DATA and EXTENDED_REPLY share the frame's buffer (no copy).
///
/// # Errors
/// [`DecodeError`] when the frame is not a well-formed SFTP v3 reply.
pub fn decode_reply(frame: Bytes) -> Result<(u32, Reply), DecodeError> {
    let mut r = Reader { buf: frame };
    let t = r.u8("packet type")?;
    let id = r.u32("request id")?;
    let reply = match t {
        fxp::STATUS => {
            let code = StatusCode::from_u32(r.u32("status code")?);
            // Message and language tag are optional in practice (some servers omit them).
            let message = if r.buf.has_remaining() {
                let m = r.bytes("status message")?;
                if r.buf.has_remaining() {
                    r.bytes("language tag")?;
                }
                String::from_utf8_lossy(&m).into_owned()
            } else {
                String::new()
            };
            Reply::Status { code, message }
        }
        fxp::HANDLE => {
            let h = r.bytes("handle")?;
            if h.len() > MAX_HANDLE {
                return Err(DecodeError::HandleTooLong(h.len()));
            }
            Reply::Handle(h.to_vec())
        }
        fxp::DATA => Reply::Data(r.bytes("data")?),
        fxp::NAME => {
            let count = r.u32("name count")? as usize;
            // An entry takes at least 12 bytes; never reserve for more than fit.
            let mut names = Vec::with_capacity(count.min(r.buf.remaining() / 12));
            for _ in 0..count {
                let name = r.bytes("file name")?.to_vec();
                r.bytes("long name")?;
                let attrs = r.attrs()?;
                names.push(NameEntry { name, attrs });
            }
            Reply::Name(names)
        }
        fxp::ATTRS => Reply::Attrs(r.attrs()?),
        fxp::EXTENDED_REPLY => {
            let rest = r.buf.split_off(0);
            Reply::Extended(rest)
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    r.finish()?;
    Ok((id, reply))
}

/// Decodes the reply to `limits@openssh.com`.
///
/// # Errors
/// [`DecodeError::Truncated`] when it is shorter than four numbers.
pub fn decode_limits(data: Bytes) -> Result<Limits, DecodeError> {
    let mut r = Reader { buf: data };
    Ok(Limits {
        max_packet: r.u64("max packet")?,
        max_read: r.u64("max read")?,
        max_write: r.u64("max write")?,
        max_open_handles: r.u64("max open handles")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    fn string(b: &[u8]) -> Vec<u8> {
        [&(b.len() as u32).to_be_bytes()[..], b].concat()
    }

    #[test]
    fn handles_of_every_byte_value_round_trip() {
        // Every byte 0..=255 appears in some handle, in every position of a
        // 4-byte counter, as asyncssh-style servers produce them.
        let mut handles: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        handles.extend((0..=255u32).map(|i| (i * 0x0101_0101).to_be_bytes().to_vec()));
        handles.push((0..=255u8).collect());
        for h in handles {
            let wire = frame(&[&[fxp::HANDLE], &7u32.to_be_bytes(), &string(&h)]);
            let (id, reply) = decode_reply(wire).unwrap();
            assert_eq!((id, reply), (7, Reply::Handle(h.clone())));
            // And back out exactly as received.
            let mut out = Vec::new();
            encode(9, &Request::Read { handle: &h, offset: 1 << 40, len: 32768 }, &mut out);
            let len = u32::from_be_bytes(out[0..4].try_into().unwrap()) as usize;
            assert_eq!(len, out.len() - 4);
            assert_eq!(out[4], fxp::READ);
            assert_eq!(&out[5..9], &9u32.to_be_bytes());
            assert_eq!(&out[9..13], &(h.len() as u32).to_be_bytes());
            assert_eq!(&out[13..13 + h.len()], &h[..]);
            assert_eq!(&out[13 + h.len()..21 + h.len()], &(1u64 << 40).to_be_bytes());
        }
    }

    #[test]
    fn names_are_bytes_and_counts_do_not_size_memory() {
        let attrs = [
            &0x0000_000du32.to_be_bytes()[..],
            &5u64.to_be_bytes(),
            &0o100644u32.to_be_bytes(),
            &1u32.to_be_bytes(),
            &1_700_000_000u32.to_be_bytes(),
        ]
        .concat();
        let name = b"caf\xe9.txt";
        let wire =
            frame(&[&[fxp::NAME], &1u32.to_be_bytes(), &1u32.to_be_bytes(), &string(name), &string(b"-rw"), &attrs]);
        let (_, reply) = decode_reply(wire).unwrap();
        let Reply::Name(names) = reply else { panic!("not a NAME") };
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].name, name.to_vec());
        assert_eq!(names[0].attrs, Attrs { size: Some(5), permissions: Some(0o100644), mtime: Some(1_700_000_000) });
        assert_eq!(names[0].attrs.kind(), FileKind::File);
        // A count of four billion with no entries behind it is an error, not an allocation.
        let wire = frame(&[&[fxp::NAME], &1u32.to_be_bytes(), &u32::MAX.to_be_bytes()]);
        assert_eq!(decode_reply(wire), Err(DecodeError::Truncated("file name")));
    }

    #[test]
    fn malformed_replies_are_errors() {
        for (wire, want) in [
            (frame(&[]), DecodeError::Truncated("packet type")),
            (frame(&[&[fxp::STATUS], &[0, 0]]), DecodeError::Truncated("request id")),
            (
                frame(&[&[fxp::DATA], &1u32.to_be_bytes(), &100u32.to_be_bytes(), b"abc"]),
                DecodeError::Truncated("data"),
            ),
            (frame(&[&[fxp::HANDLE], &1u32.to_be_bytes(), &string(&[0; 300])]), DecodeError::HandleTooLong(300)),
            (frame(&[&[99], &1u32.to_be_bytes()]), DecodeError::UnknownType(99)),
            (frame(&[&[fxp::ATTRS], &1u32.to_be_bytes(), &0u32.to_be_bytes(), b"x"]), DecodeError::Trailing(1)),
            (
                frame(&[&[fxp::ATTRS], &1u32.to_be_bytes(), &ATTR_EXTENDED.to_be_bytes(), &u32::MAX.to_be_bytes()]),
                DecodeError::Truncated("extended type"),
            ),
        ] {
            assert_eq!(decode_reply(wire), Err(want));
        }
    }

    #[test]
    fn status_with_and_without_message() {
        let full = frame(&[
            &[fxp::STATUS],
            &3u32.to_be_bytes(),
            &2u32.to_be_bytes(),
            &string(b"No such file"),
            &string(b"en"),
        ]);
        assert_eq!(
            decode_reply(full).unwrap(),
            (3, Reply::Status { code: StatusCode::NoSuchFile, message: "No such file".into() })
        );
        let bare = frame(&[&[fxp::STATUS], &4u32.to_be_bytes(), &1u32.to_be_bytes()]);
        assert_eq!(decode_reply(bare).unwrap(), (4, Reply::Status { code: StatusCode::Eof, message: String::new() }));
    }

    #[test]
    fn version_and_limits() {
        let wire = frame(&[&[fxp::VERSION], &3u32.to_be_bytes(), &string(b"limits@openssh.com"), &string(b"1")]);
        let v = decode_version(wire).unwrap();
        assert_eq!(v.version, 3);
        assert!(v.has("limits@openssh.com"));
        assert!(!v.has("statvfs@openssh.com"));
        let l = [262144u64, 261120, 261120, 0].iter().flat_map(|n| n.to_be_bytes()).collect::<Vec<u8>>();
        assert_eq!(decode_limits(Bytes::from(l)).unwrap().max_read, 261120);
        assert!(decode_limits(Bytes::from_static(&[0; 12])).is_err());
    }

    #[test]
    fn requests_are_framed() {
        let mut out = Vec::new();
        encode_init(&mut out);
        assert_eq!(out, [0, 0, 0, 5, fxp::INIT, 0, 0, 0, 3]);
        out.clear();
        encode(1, &Request::OpenRead(b"/a b"), &mut out);
        assert_eq!(
            out,
            [
                &[0, 0, 0, 21, fxp::OPEN][..],
                &1u32.to_be_bytes(),
                &string(b"/a b"),
                &1u32.to_be_bytes(),
                &0u32.to_be_bytes()
            ]
            .concat()
        );
        out.clear();
        encode(2, &Request::Extended { name: "limits@openssh.com", data: &[] }, &mut out);
        assert_eq!(&out[4..9], &[fxp::EXTENDED, 0, 0, 0, 2]);
    }
}
