//! The two upload protocols on the loader's TCP connection (docs/bootstrap.md §1, §2).
//!
//! **Stage-1 upload** (client to inflate-loader): a 16-byte header, then the stage-2 binary.
//! Integers are big-endian.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `LMSTAGE2` |
//! | 8 | 4 | version, 1 |
//! | 12 | 4 | length of the binary, 1 ..= [`STAGE2_MAX`] |
//!
//! A checkpoint stream starts with `LNDRCKPT` instead, which is how stage 1 tells the two
//! apart from the first 8 bytes. Stage 1 answers one line, [`STAGE1_OK`] or
//! [`STAGE1_REFUSED`] followed by the reason.
//!
//! **Stage-2 upload** (client to stage 2, once it greeted with [`STAGE2_READY`]): three items
//! in this order, each an 8-byte header (4-byte tag, 4-byte big-endian length) and its bytes:
//! `KERN` (the kernel's ELF image), `INRD` (the initramfs, may be empty), `CMDL` (the kernel
//! command line, no NUL byte). Stage 2 acknowledges each with `ok TAG LEN`, or answers
//! `error REASON` and powers the domain off.
//!
//! **Version 2** of the stage-2 upload (a greeting that ends in ` version=2`) also takes the
//! kernel and the initramfs zlib-compressed, as `KERZ` and `INRZ` items: the item's bytes are
//! a 4-byte big-endian inflated length, then one zlib stream (RFC 1950) that inflates to
//! exactly that many bytes (`crate::inflate` with the `inflate` feature). Acknowledged with
//! `ok TAG LEN INFLATED`.

use core::fmt;

/// First 8 bytes of a stage-1 upload.
pub const STAGE1_MAGIC: [u8; 8] = *b"LMSTAGE2";
/// The only stage-1 upload version.
pub const STAGE1_VERSION: u32 = 1;
/// Length of the stage-1 header.
pub const STAGE1_HEADER_LEN: usize = 16;
/// Largest stage-2 binary: its whole region (code, data and bss must fit; its linker script
/// checks that).
pub const STAGE2_MAX: u32 = crate::layout::STAGE2_REGION as u32;

/// Stage 1's answers: a line starting with one of these, ended by `\n`.
pub const STAGE1_OK: &str = "stage2 ok sha1=";
pub const STAGE1_REFUSED: &str = "stage2 refused: ";
/// Stage 2's greeting, followed by `arena=BYTES` (the most kernel + initramfs can take) and,
/// from version 2 on, ` version=N`.
pub const STAGE2_READY: &str = "stage2 ready ";
/// The stage-2 upload version this crate speaks: 2 adds the compressed items.
pub const STAGE2_VERSION: u32 = 2;
/// Stage 2's acknowledgement of an item: `ok TAG LEN`.
pub const ITEM_OK: &str = "ok ";
/// Stage 2's refusal of anything: `error REASON`; the domain then powers off.
pub const ERROR: &str = "error ";
/// Stage 2's last line before it calls the PV builder; after a successful hand-over the
/// connection closes with no further line.
pub const BOOTING: &str = "booting";

/// Longest line either stage sends, `\n` included.
pub const LINE_MAX: usize = 200;

/// Length of a stage-2 item header.
pub const ITEM_HEADER_LEN: usize = 8;

/// One item of the stage-2 upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Kernel,
    Initrd,
    Cmdline,
}

/// How an item's bytes are coded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// The bytes themselves (`KERN`, `INRD`, `CMDL`).
    Plain,
    /// A 4-byte big-endian inflated length, then a zlib stream (`KERZ`, `INRZ`; version 2).
    Zlib,
}

/// Length of the prefix of a compressed item: the inflated length.
pub const ZLIB_PREFIX_LEN: usize = 4;
/// Shortest zlib stream: 2 header bytes, an empty final block (2 bytes), the Adler-32 (4).
pub const ZLIB_MIN: u32 = 8;

/// Largest kernel image (a distribution's vmlinux with debug info stripped is ~60 MiB).
pub const KERNEL_MAX: u32 = 128 << 20;
/// Largest initramfs.
pub const INITRD_MAX: u32 = 512 << 20;
/// Largest command line: start_info's MAX_GUEST_CMDLINE (1024) less the terminating NUL.
pub const CMDLINE_MAX: u32 = 1023;

impl Item {
    /// The order of the upload.
    pub const ALL: [Item; 3] = [Item::Kernel, Item::Initrd, Item::Cmdline];

    pub const fn tag(self) -> [u8; 4] {
        match self {
            Item::Kernel => *b"KERN",
            Item::Initrd => *b"INRD",
            Item::Cmdline => *b"CMDL",
        }
    }

    pub fn tag_str(self) -> &'static str {
        match self {
            Item::Kernel => "KERN",
            Item::Initrd => "INRD",
            Item::Cmdline => "CMDL",
        }
    }

    /// The tag of the compressed form (version 2), if the item has one.
    pub const fn ztag(self) -> Option<[u8; 4]> {
        match self {
            Item::Kernel => Some(*b"KERZ"),
            Item::Initrd => Some(*b"INRZ"),
            Item::Cmdline => None,
        }
    }

    /// The tag as sent with `coding`, as text.
    pub fn tag_str_of(self, coding: Coding) -> &'static str {
        match (self, coding) {
            (Item::Kernel, Coding::Zlib) => "KERZ",
            (Item::Initrd, Coding::Zlib) => "INRZ",
            (i, _) => i.tag_str(),
        }
    }

    /// Inclusive bounds of the item's length.
    pub const fn bounds(self) -> (u32, u32) {
        match self {
            Item::Kernel => (1, KERNEL_MAX),
            Item::Initrd => (0, INITRD_MAX),
            Item::Cmdline => (0, CMDLINE_MAX),
        }
    }
}

/// What is wrong with an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadError {
    /// Fewer bytes than a header.
    Truncated {
        have: usize,
        need: usize,
    },
    BadMagic([u8; 8]),
    Version(u32),
    /// A length outside its bounds.
    Length {
        what: &'static str,
        len: u32,
        min: u32,
        max: u32,
    },
    /// An item other than the one due.
    WrongItem {
        got: [u8; 4],
        want: Item,
    },
    /// The command line holds a NUL byte.
    CmdlineNul,
    /// Bytes after the command line.
    Trailing(usize),
    /// A compressed item's bytes are not a zlib stream of its inflated length.
    Inflate {
        tag: &'static str,
        err: InflateError,
    },
}

/// Why a compressed item was refused while it was inflated (`crate::inflate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The stream inflates to more than the declared length (a "bomb", or a wrong length).
    TooLong { declared: u32 },
    /// The stream ended after fewer bytes than declared.
    Short { got: usize, declared: u32 },
    /// The item's bytes ended before the stream did.
    Truncated { zlen: usize, out: usize },
    /// Bytes of the item after the end of the stream.
    Trailing { bytes: usize },
    /// Not a valid zlib stream (header, Huffman codes, distances) at input byte `at`.
    Corrupt { at: usize, out: usize },
    /// The stream's Adler-32 is not that of the inflated bytes.
    Checksum,
    /// A preset dictionary (FDICT) is asked for; this protocol has none.
    Dictionary,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InflateError::TooLong { declared } => {
                write!(
                    f,
                    "the zlib stream inflates to more than the declared {declared} bytes"
                )
            }
            InflateError::Short { got, declared } => write!(
                f,
                "the zlib stream ended after {got} bytes, {declared} were declared"
            ),
            InflateError::Truncated { zlen, out } => write!(
                f,
                "the zlib stream does not end within its {zlen} bytes ({out} bytes inflated)"
            ),
            InflateError::Trailing { bytes } => {
                write!(f, "{bytes} bytes after the end of the zlib stream")
            }
            InflateError::Corrupt { at, out } => write!(
                f,
                "corrupt zlib data near input byte {at} ({out} bytes inflated)"
            ),
            InflateError::Checksum => f.write_str("zlib Adler-32 mismatch: the data is damaged"),
            InflateError::Dictionary => f.write_str(
                "the zlib stream wants a preset dictionary (FDICT), which is not supported",
            ),
        }
    }
}

fn printable(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    for &c in b {
        if c.is_ascii_graphic() {
            write!(f, "{}", c as char)?;
        } else {
            write!(f, "\\x{c:02x}")?;
        }
    }
    Ok(())
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UploadError::Truncated { have, need } => {
                write!(f, "truncated header: {have} of {need} bytes")
            }
            UploadError::BadMagic(m) => {
                f.write_str("bad magic '")?;
                printable(f, &m)?;
                f.write_str("' (want LMSTAGE2)")
            }
            UploadError::Version(v) => {
                write!(f, "unsupported version {v} (want {STAGE1_VERSION})")
            }
            UploadError::Length {
                what,
                len,
                min,
                max,
            } => {
                write!(f, "{what} length {len} outside {min}..={max}")
            }
            UploadError::WrongItem { got, want } => {
                f.write_str("item '")?;
                printable(f, &got)?;
                write!(f, "' where {} is due", want.tag_str())
            }
            UploadError::CmdlineNul => f.write_str("command line contains a NUL byte"),
            UploadError::Trailing(n) => write!(f, "{n} bytes after the command line"),
            UploadError::Inflate { tag, err } => write!(f, "{tag}: {err}"),
        }
    }
}

/// Whether the first bytes of a connection are a stage-1 upload (`prefix` = up to 8 bytes).
pub fn is_stage1_magic(prefix: &[u8]) -> bool {
    prefix.len() >= 8 && prefix[..8] == STAGE1_MAGIC
}

/// Parse a stage-1 header; returns the binary's length.
pub fn parse_stage1_header(h: &[u8]) -> Result<u32, UploadError> {
    if h.len() < STAGE1_HEADER_LEN {
        return Err(UploadError::Truncated {
            have: h.len(),
            need: STAGE1_HEADER_LEN,
        });
    }
    let magic: [u8; 8] = h[..8].try_into().expect("8 bytes");
    if magic != STAGE1_MAGIC {
        return Err(UploadError::BadMagic(magic));
    }
    let version = be32(&h[8..12]);
    if version != STAGE1_VERSION {
        return Err(UploadError::Version(version));
    }
    let len = be32(&h[12..16]);
    if !(1..=STAGE2_MAX).contains(&len) {
        return Err(UploadError::Length {
            what: "stage-2",
            len,
            min: 1,
            max: STAGE2_MAX,
        });
    }
    Ok(len)
}

/// The stage-1 header for a binary of `len` bytes.
pub fn stage1_header(len: u32) -> [u8; STAGE1_HEADER_LEN] {
    let mut h = [0u8; STAGE1_HEADER_LEN];
    h[..8].copy_from_slice(&STAGE1_MAGIC);
    h[8..12].copy_from_slice(&STAGE1_VERSION.to_be_bytes());
    h[12..16].copy_from_slice(&len.to_be_bytes());
    h
}

/// Parse the header of the item `want`; returns its length.
pub fn parse_item_header(h: &[u8], want: Item) -> Result<u32, UploadError> {
    if h.len() < ITEM_HEADER_LEN {
        return Err(UploadError::Truncated {
            have: h.len(),
            need: ITEM_HEADER_LEN,
        });
    }
    let got: [u8; 4] = h[..4].try_into().expect("4 bytes");
    if got != want.tag() {
        return Err(UploadError::WrongItem { got, want });
    }
    let len = be32(&h[4..8]);
    let (min, max) = want.bounds();
    if !(min..=max).contains(&len) {
        return Err(UploadError::Length {
            what: want.tag_str(),
            len,
            min,
            max,
        });
    }
    Ok(len)
}

/// Parse the header of the item `want` in version 2, where the kernel and the initramfs may
/// come compressed; returns the coding and the length on the wire. A compressed item's length
/// counts its 4-byte prefix and must leave room for the shortest zlib stream; its bound is the
/// plain item's.
pub fn parse_item_header_v2(h: &[u8], want: Item) -> Result<(Coding, u32), UploadError> {
    if h.len() >= ITEM_HEADER_LEN {
        if let Some(z) = want.ztag().filter(|z| h[..4] == *z) {
            let len = be32(&h[4..8]);
            let min = ZLIB_PREFIX_LEN as u32 + ZLIB_MIN;
            let max = want.bounds().1;
            if !(min..=max).contains(&len) {
                return Err(UploadError::Length {
                    what: want.tag_str_of(Coding::Zlib),
                    len,
                    min,
                    max,
                });
            }
            debug_assert_eq!(&z[..3], &want.tag()[..3]);
            return Ok((Coding::Zlib, len));
        }
    }
    parse_item_header(h, want).map(|n| (Coding::Plain, n))
}

/// The inflated length in a compressed item's 4-byte prefix, checked against the plain item's
/// bounds.
pub fn parse_zlib_prefix(p: &[u8], item: Item) -> Result<u32, UploadError> {
    if p.len() < ZLIB_PREFIX_LEN {
        return Err(UploadError::Truncated {
            have: p.len(),
            need: ZLIB_PREFIX_LEN,
        });
    }
    let n = be32(p);
    let (min, max) = item.bounds();
    if !(min..=max).contains(&n) {
        return Err(UploadError::Length {
            what: match item {
                Item::Kernel => "KERZ inflated",
                _ => "INRZ inflated",
            },
            len: n,
            min,
            max,
        });
    }
    Ok(n)
}

/// The header of a compressed `item` whose zlib stream has `zlen` bytes (the prefix is
/// counted here), followed by the prefix with the inflated length. None for the command line.
pub fn zitem_header(item: Item, zlen: u32, inflated: u32) -> Option<[u8; ITEM_HEADER_LEN + 4]> {
    let tag = item.ztag()?;
    let mut h = [0u8; ITEM_HEADER_LEN + ZLIB_PREFIX_LEN];
    h[..4].copy_from_slice(&tag);
    h[4..8].copy_from_slice(&zlen.checked_add(ZLIB_PREFIX_LEN as u32)?.to_be_bytes());
    h[8..].copy_from_slice(&inflated.to_be_bytes());
    Some(h)
}

/// The version a stage-2 greeting announces (the text after [`STAGE2_READY`]): the number in
/// a `version=N` word, 1 when there is none (the first stage 2s did not say).
pub fn greeting_version(rest: &str) -> u32 {
    rest.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("version="))
        .map_or(1, |v| v.parse().unwrap_or(0))
}

/// The header of `item` with `len` bytes.
pub fn item_header(item: Item, len: u32) -> [u8; ITEM_HEADER_LEN] {
    let mut h = [0u8; ITEM_HEADER_LEN];
    h[..4].copy_from_slice(&item.tag());
    h[4..].copy_from_slice(&len.to_be_bytes());
    h
}

/// A received command line is acceptable (it becomes a NUL-terminated string).
pub fn check_cmdline(c: &[u8]) -> Result<(), UploadError> {
    if c.contains(&0) {
        Err(UploadError::CmdlineNul)
    } else {
        Ok(())
    }
}

/// A whole client-side session, as the bytes a client sends in order (stage-1 upload, then
/// the three items), split into its parts. Stage 1 and stage 2 parse the same headers
/// incrementally off the connection; this one-shot form is for tests, the fuzz target and
/// tools that write or check an upload file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session<'a> {
    pub stage2: &'a [u8],
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a [u8],
}

/// Split `b` into a [`Session`]; every header is checked as the stages check it, and no byte
/// may follow the command line.
pub fn parse_session(b: &[u8]) -> Result<Session<'_>, UploadError> {
    let s = split_session(b, false)?;
    Ok(Session {
        stage2: s.stage2,
        kernel: s.kernel.data,
        initrd: s.initrd.data,
        cmdline: s.cmdline,
    })
}

/// One item of a version-2 session as sent: its coding, its bytes on the wire (for `Zlib`
/// the stream after the prefix) and the length it has once inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    pub coding: Coding,
    pub data: &'a [u8],
    pub inflated: u32,
}

/// A whole version-2 client session, like [`Session`], with the kernel and the initramfs in
/// either coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionV2<'a> {
    pub stage2: &'a [u8],
    pub kernel: Part<'a>,
    pub initrd: Part<'a>,
    pub cmdline: &'a [u8],
}

/// Split `b` into a [`SessionV2`], checking every header and prefix as stage 2 does (the
/// streams themselves are checked when inflated, `crate::inflate`).
pub fn parse_session_v2(b: &[u8]) -> Result<SessionV2<'_>, UploadError> {
    split_session(b, true)
}

/// Both session forms: version 1 (`zlib` false) takes plain items only, as stage 2's version-1
/// receive does.
fn split_session(b: &[u8], zlib: bool) -> Result<SessionV2<'_>, UploadError> {
    let len = parse_stage1_header(b)? as usize;
    let rest = &b[STAGE1_HEADER_LEN..];
    if rest.len() < len {
        return Err(UploadError::Truncated {
            have: STAGE1_HEADER_LEN + rest.len(),
            need: STAGE1_HEADER_LEN + len,
        });
    }
    let (stage2, mut rest) = rest.split_at(len);
    let mut parts = [Part {
        coding: Coding::Plain,
        data: &[],
        inflated: 0,
    }; 3];
    for (part, item) in parts.iter_mut().zip(Item::ALL) {
        let (coding, n) = if zlib {
            parse_item_header_v2(rest, item)?
        } else {
            (Coding::Plain, parse_item_header(rest, item)?)
        };
        let n = n as usize;
        let body = &rest[ITEM_HEADER_LEN..];
        if body.len() < n {
            return Err(UploadError::Truncated {
                have: rest.len(),
                need: ITEM_HEADER_LEN + n,
            });
        }
        let (this, after) = body.split_at(n);
        *part = match coding {
            Coding::Plain => Part {
                coding,
                data: this,
                inflated: n as u32,
            },
            Coding::Zlib => Part {
                coding,
                inflated: parse_zlib_prefix(this, item)?,
                data: &this[ZLIB_PREFIX_LEN..],
            },
        };
        rest = after;
    }
    check_cmdline(parts[2].data)?;
    if !rest.is_empty() {
        return Err(UploadError::Trailing(rest.len()));
    }
    Ok(SessionV2 {
        stage2,
        kernel: parts[0],
        initrd: parts[1],
        cmdline: parts[2].data,
    })
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// A line of at most [`LINE_MAX`] bytes built without a heap; text beyond the limit is cut
/// and the line always ends with `\n`.
pub struct Line {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }
}

impl Line {
    pub fn new(args: fmt::Arguments<'_>) -> Self {
        let mut l = Line::default();
        let _ = fmt::write(&mut l, args);
        l.buf[l.len] = b'\n';
        l.len += 1;
        l
    }

    /// The bytes to send, `\n` included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the newline.
        for &c in s.as_bytes() {
            if self.len >= LINE_MAX - 1 {
                break;
            }
            // A line is one line: embedded newlines become spaces.
            self.buf[self.len] = if c == b'\n' { b' ' } else { c };
            self.len += 1;
        }
        Ok(())
    }
}

/// Lower-case hex of a SHA-1 digest.
pub fn hex20(d: &[u8; 20]) -> [u8; 40] {
    let mut out = [0u8; 40];
    for (i, b) in d.iter().enumerate() {
        out[2 * i] = b"0123456789abcdef"[(b >> 4) as usize];
        out[2 * i + 1] = b"0123456789abcdef"[(b & 15) as usize];
    }
    out
}

/// The stage-2 SHA-1 on a loader's command line: the word `stage2-sha1=HEX` (40 hex digits),
/// which packetd writes from the boot token. None when absent or malformed.
pub fn cmdline_stage2_sha1(cmdline: &str) -> Option<[u8; 20]> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("stage2-sha1="))
        .and_then(|h| parse_hex20(h.as_bytes()))
}

/// Parse 40 hex digits (either case) into a digest.
pub fn parse_hex20(s: &[u8]) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    let mut d = [0u8; 20];
    for (i, o) in d.iter_mut().enumerate() {
        *o = nib(s[2 * i])? << 4 | nib(s[2 * i + 1])?;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn stage1_header_round_trip_and_bounds() {
        let h = stage1_header(4096);
        assert_eq!(&h[..8], b"LMSTAGE2");
        assert_eq!(parse_stage1_header(&h), Ok(4096));
        assert_eq!(
            parse_stage1_header(&stage1_header(STAGE2_MAX)),
            Ok(STAGE2_MAX)
        );
        for bad in [0, STAGE2_MAX + 1, u32::MAX] {
            let e = parse_stage1_header(&stage1_header(bad)).unwrap_err();
            assert!(matches!(e, UploadError::Length { len, .. } if len == bad));
        }
    }

    #[test]
    fn stage1_header_refusals_say_why() {
        let h = stage1_header(10);
        assert_eq!(
            parse_stage1_header(&h[..15]),
            Err(UploadError::Truncated { have: 15, need: 16 })
        );
        let mut m = h;
        m[..8].copy_from_slice(b"LNDRCKPT");
        let e = parse_stage1_header(&m).unwrap_err();
        assert_eq!(e.to_string(), "bad magic 'LNDRCKPT' (want LMSTAGE2)");
        let mut v = h;
        v[11] = 2;
        assert_eq!(
            parse_stage1_header(&v).unwrap_err().to_string(),
            "unsupported version 2 (want 1)"
        );
        assert!(is_stage1_magic(&h));
        assert!(!is_stage1_magic(&h[..7]));
        assert!(!is_stage1_magic(b"LNDRCKPT"));
    }

    #[test]
    fn items_come_in_order_within_bounds() {
        let h = item_header(Item::Kernel, 5);
        assert_eq!(parse_item_header(&h, Item::Kernel), Ok(5));
        assert_eq!(
            parse_item_header(&h, Item::Initrd).unwrap_err().to_string(),
            "item 'KERN' where INRD is due"
        );
        assert!(parse_item_header(&item_header(Item::Kernel, 0), Item::Kernel).is_err());
        assert_eq!(
            parse_item_header(&item_header(Item::Initrd, 0), Item::Initrd),
            Ok(0)
        );
        assert_eq!(
            parse_item_header(&item_header(Item::Cmdline, 1024), Item::Cmdline)
                .unwrap_err()
                .to_string(),
            "CMDL length 1024 outside 0..=1023"
        );
        assert_eq!(
            parse_item_header(&h[..3], Item::Kernel),
            Err(UploadError::Truncated { have: 3, need: 8 })
        );
        let mut bin = h;
        bin[0] = 0;
        assert_eq!(
            parse_item_header(&bin, Item::Kernel)
                .unwrap_err()
                .to_string(),
            "item '\\x00ERN' where KERN is due"
        );
        assert_eq!(check_cmdline(b"console=hvc0"), Ok(()));
        assert_eq!(check_cmdline(b"a\0b"), Err(UploadError::CmdlineNul));
    }

    #[test]
    fn sessions_split_and_refuse_truncation_and_trailing_bytes() {
        let mut b = std::vec::Vec::new();
        b.extend_from_slice(&stage1_header(3));
        b.extend_from_slice(b"abc");
        for (item, data) in [
            (Item::Kernel, &b"\x7fELF"[..]),
            (Item::Initrd, b""),
            (Item::Cmdline, b"quiet"),
        ] {
            b.extend_from_slice(&item_header(item, data.len() as u32));
            b.extend_from_slice(data);
        }
        let s = parse_session(&b).unwrap();
        assert_eq!(
            (s.stage2, s.kernel, s.initrd, s.cmdline),
            (&b"abc"[..], &b"\x7fELF"[..], &b""[..], &b"quiet"[..])
        );
        for cut in 0..b.len() {
            assert!(parse_session(&b[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut t = b.clone();
        t.push(0);
        assert_eq!(parse_session(&t), Err(UploadError::Trailing(1)));
    }

    #[test]
    fn version_2_takes_compressed_kernel_and_initramfs() {
        let z = zitem_header(Item::Kernel, 100, 5000).unwrap();
        assert_eq!(&z[..8], b"KERZ\0\0\0\x68");
        assert_eq!(
            parse_item_header_v2(&z, Item::Kernel),
            Ok((Coding::Zlib, 104))
        );
        assert_eq!(parse_zlib_prefix(&z[8..], Item::Kernel), Ok(5000));
        assert!(zitem_header(Item::Cmdline, 10, 10).is_none());
        // Plain items still parse; a compressed tag where it is not due does not.
        assert_eq!(
            parse_item_header_v2(&item_header(Item::Initrd, 0), Item::Initrd),
            Ok((Coding::Plain, 0))
        );
        assert_eq!(
            parse_item_header_v2(&z, Item::Initrd)
                .unwrap_err()
                .to_string(),
            "item 'KERZ' where INRD is due"
        );
        let mut c = item_header(Item::Cmdline, 3);
        c[3] = b'Z';
        assert!(parse_item_header_v2(&c, Item::Cmdline).is_err());
        // Bounds: room for the prefix and the shortest stream; the plain item's maximum; the
        // inflated length within the plain item's bounds.
        let mut h = item_header(Item::Kernel, 11);
        h[3] = b'Z';
        assert_eq!(
            parse_item_header_v2(&h, Item::Kernel)
                .unwrap_err()
                .to_string(),
            "KERZ length 11 outside 12..=134217728"
        );
        h[4..].copy_from_slice(&(KERNEL_MAX + 1).to_be_bytes());
        assert!(parse_item_header_v2(&h, Item::Kernel).is_err());
        assert_eq!(
            parse_zlib_prefix(&0u32.to_be_bytes(), Item::Kernel)
                .unwrap_err()
                .to_string(),
            "KERZ inflated length 0 outside 1..=134217728"
        );
        assert_eq!(parse_zlib_prefix(&0u32.to_be_bytes(), Item::Initrd), Ok(0));
        assert!(parse_zlib_prefix(&(INITRD_MAX + 1).to_be_bytes(), Item::Initrd).is_err());
        assert_eq!(
            parse_zlib_prefix(&[0; 3], Item::Initrd),
            Err(UploadError::Truncated { have: 3, need: 4 })
        );
    }

    #[test]
    fn greeting_says_the_version() {
        assert_eq!(greeting_version("arena=52420608"), 1);
        assert_eq!(greeting_version("arena=52420608 version=2"), 2);
        assert_eq!(greeting_version("version=x arena=1"), 0);
    }

    #[test]
    fn lines_are_bounded_and_end_in_newline() {
        let l = Line::new(format_args!("ok {} {}", "KERN", 7));
        assert_eq!(l.as_bytes(), b"ok KERN 7\n");
        let long = "x".repeat(500);
        let l = Line::new(format_args!("error {long}\nmore"));
        assert_eq!(l.as_bytes().len(), LINE_MAX);
        assert_eq!(l.as_bytes().last(), Some(&b'\n'));
        let l = Line::new(format_args!("a\nb"));
        assert_eq!(l.as_bytes(), b"a b\n");
    }

    #[test]
    fn stage2_sha1_comes_from_the_command_line() {
        let h = "32685857d8d3ad465aa8fe93fc53e67cde874ae4";
        let want = parse_hex20(h.as_bytes()).unwrap();
        let line = std::format!("console=hvc0 ip=10.0.0.120 port=7000 stage2-sha1={h}");
        assert_eq!(cmdline_stage2_sha1(&line), Some(want));
        assert_eq!(cmdline_stage2_sha1("ip=1.2.3.4"), None);
        assert_eq!(cmdline_stage2_sha1("stage2-sha1=1234"), None);
        assert_eq!(cmdline_stage2_sha1(&std::format!("xstage2-sha1={h}")), None);
    }

    #[test]
    fn hex_round_trip() {
        let d: [u8; 20] = core::array::from_fn(|i| (i * 13) as u8);
        let h = hex20(&d);
        assert_eq!(parse_hex20(&h), Some(d));
        assert_eq!(parse_hex20(&h.to_ascii_uppercase()), Some(d));
        assert_eq!(parse_hex20(&h[..39]), None);
        assert_eq!(parse_hex20(&[b'g'; 40]), None);
    }
}
