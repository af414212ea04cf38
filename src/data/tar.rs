//! A small tar reader and writer for WebDataset shards: ustar and GNU headers, GNU long names,
//! pax `path` records. The reader never panics on garbage: a bad header or a member cut off by
//! the end of the file yields one error and ends the stream.

use std::fmt;
use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Members larger than this are taken for a garbled header (no real shard member is 4 GiB).
const MAX_MEMBER_BYTES: u64 = 1 << 32;

/// One regular file of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarMember {
    pub name: String,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub enum TarError {
    /// The archive ends inside a member's header or data; `member` is its name when known.
    Truncated {
        member: Option<String>,
        offset: u64,
    },
    /// A header block whose checksum or size field does not parse.
    BadHeader {
        offset: u64,
        reason: &'static str,
    },
    /// A member larger than the reader's cap, stopped before its data is read into memory.
    TooLarge {
        member: String,
        size: u64,
        cap: u64,
    },
    Io(io::Error),
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            TarError::Truncated {
                member: Some(name),
                offset,
            } => write!(f, "tar cut off inside member {name:?} (byte {offset})"),
            TarError::Truncated {
                member: None,
                offset,
            } => write!(f, "tar cut off inside a header (byte {offset})"),
            TarError::BadHeader { offset, reason } => {
                write!(f, "bad tar header at byte {offset}: {reason}")
            }
            TarError::TooLarge { member, size, cap } => write!(
                f,
                "tar member {member:?} holds {size} bytes, over the {} MiB cap",
                cap >> 20
            ),
            TarError::Io(err) => write!(f, "read error: {err}"),
        }
    }
}

impl std::error::Error for TarError {}

/// Iterates the regular files of a tar stream.
pub struct TarReader<R> {
    inner: R,
    offset: u64,
    finished: bool,
    /// Name from a GNU 'L' or pax 'x' member, for the next file.
    next_name: Option<String>,
    /// Largest member read into memory.
    member_cap: u64,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_member_cap(inner, MAX_MEMBER_BYTES)
    }

    /// A reader that ends with [`TarError::TooLarge`] at a member over `cap` bytes: a gzip
    /// shard of a few KB can claim gigabytes of zeros.
    pub fn with_member_cap(inner: R, cap: u64) -> Self {
        TarReader {
            inner,
            offset: 0,
            finished: false,
            next_name: None,
            member_cap: cap,
        }
    }

    /// Reads up to `buf.len()` bytes; returns how many (fewer only at end of file).
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(TarError::Io(err)),
            }
        }
        self.offset += filled as u64;
        Ok(filled)
    }

    fn read_member_data(&mut self, size: u64, name: &str) -> Result<Vec<u8>, TarError> {
        let mut data = Vec::new();
        let start = self.offset;
        let got = (&mut self.inner)
            .take(size)
            .read_to_end(&mut data)
            .map_err(TarError::Io)?;
        self.offset += got as u64;
        if (got as u64) < size {
            return Err(TarError::Truncated {
                member: Some(name.to_string()),
                offset: start,
            });
        }
        let padding = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        let mut pad = [0u8; BLOCK];
        // A file cut off inside the final padding still holds the whole member.
        self.fill(&mut pad[..padding])?;
        Ok(data)
    }

    fn next_member(&mut self) -> Result<Option<TarMember>, TarError> {
        loop {
            let header_offset = self.offset;
            let mut header = [0u8; BLOCK];
            let got = self.fill(&mut header)?;
            if got == 0 {
                return Ok(None);
            }
            if got < BLOCK {
                return Err(TarError::Truncated {
                    member: None,
                    offset: header_offset,
                });
            }
            if header.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            if !checksum_matches(&header) {
                return Err(TarError::BadHeader {
                    offset: header_offset,
                    reason: "checksum mismatch",
                });
            }
            let size = parse_size(&header[124..136])
                .filter(|&size| size <= MAX_MEMBER_BYTES)
                .ok_or(TarError::BadHeader {
                    offset: header_offset,
                    reason: "size field",
                })?;
            let name = self
                .next_name
                .take()
                .unwrap_or_else(|| header_name(&header));
            if size > self.member_cap {
                return Err(TarError::TooLarge {
                    member: name,
                    size,
                    cap: self.member_cap,
                });
            }
            match header[156] {
                b'0' | 0 | b'7' => {
                    let data = self.read_member_data(size, &name)?;
                    return Ok(Some(TarMember { name, data }));
                }
                b'L' => {
                    let data = self.read_member_data(size, "(GNU long name)")?;
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    self.next_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                }
                b'x' => {
                    let data = self.read_member_data(size, "(pax header)")?;
                    self.next_name = pax_path(&data);
                }
                _ => {
                    self.read_member_data(size, &name)?;
                }
            }
        }
    }
}

impl<R: Read> Iterator for TarReader<R> {
    type Item = Result<TarMember, TarError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.next_member() {
            Ok(Some(member)) => Some(Ok(member)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(err) => {
                self.finished = true;
                Some(Err(err))
            }
        }
    }
}

/// The checksum field holds the byte sum of the header with the field itself read as spaces;
/// some writers summed signed bytes, so either is accepted.
fn checksum_matches(header: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_octal(&header[148..156]) else {
        return false;
    };
    let field = 148..156;
    let unsigned: u64 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| if field.contains(&i) { 32 } else { b as u64 })
        .sum();
    let signed: i64 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if field.contains(&i) {
                32
            } else {
                b as i8 as i64
            }
        })
        .sum();
    stored == unsigned || stored as i64 == signed
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text: Vec<u8> = field
        .iter()
        .copied()
        .filter(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    text.iter().try_fold(0u64, |acc, &b| {
        let digit = (b as char).to_digit(8)?;
        acc.checked_mul(8)?.checked_add(digit as u64)
    })
}

/// Octal, or GNU base-256 when the first byte has its high bit set.
fn parse_size(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => {
            let rest = std::iter::once(first & 0x7F).chain(field[1..].iter().copied());
            rest.into_iter()
                .try_fold(0u64, |acc, b| acc.checked_mul(256)?.checked_add(b as u64))
        }
        _ => parse_octal(field),
    }
}

fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn header_name(header: &[u8; BLOCK]) -> String {
    let name = c_string(&header[0..100]);
    let prefix = if &header[257..262] == b"ustar" {
        c_string(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// The `path` record of a pax extended header ("<len> path=<value>\n" records).
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    let mut path = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return path;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[len..];
    }
    path
}

/// Writes a ustar archive of regular files (names up to 100 bytes, as shard members are).
pub struct TarWriter<W: Write> {
    inner: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(inner: W) -> Self {
        TarWriter { inner }
    }

    pub fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 >= MAX_MEMBER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tar member {name:?} is too large"),
            ));
        }
        if name.len() > 100 || name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tar member name {name:?} must be 1..=100 bytes"),
            ));
        }
        let mut header = [0u8; BLOCK];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.inner.write_all(&header)?;
        self.inner.write_all(data)?;
        let padding = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.inner.write_all(&[0u8; BLOCK][..padding])
    }

    /// Writes the two zero blocks that end an archive and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&[0u8; 2 * BLOCK])?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}
