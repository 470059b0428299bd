//! The kernel log as `/dev/kmsg` serves it: one record per read, `prio,seq,usec,flags;text`,
//! continuation lines starting with a space. Marks are sequence numbers, so "what is new"
//! survives other readers and does not depend on timestamps.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::KernelError;

/// A position in the kernel log: the sequence number of the last record seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KmsgMark(pub u64);

/// One kernel log record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KmsgLine {
    /// Sequence number.
    pub seq: u64,
    /// Log level (0 = emergency .. 7 = debug).
    pub level: u8,
    /// Syslog facility: 0 for the kernel's own records; user space writing to `/dev/kmsg`
    /// gets 1 (user) or the facility it names, never 0.
    #[serde(default)]
    pub facility: u8,
    /// The message text.
    pub text: String,
}

impl KmsgLine {
    /// Whether the kernel itself wrote this record (facility 0), not user space.
    pub fn from_kernel(&self) -> bool {
        self.facility == 0
    }
}

/// Whether a log line reports a kernel warning, bug or oops.
pub fn is_kernel_warning(text: &str) -> bool {
    const MARKERS: [&str; 5] = ["WARNING:", "BUG:", "BUG at", "Oops", "[ cut here ]"];
    MARKERS.iter().any(|marker| {
        text.match_indices(marker).any(|(at, _)| {
            // "BUG:" inside a word such as "DEBUG:" is not a kernel bug report.
            !text[..at].ends_with(|c: char| c.is_ascii_alphanumeric())
        })
    })
}

/// Parses one `/dev/kmsg` record line; `None` for continuation or malformed lines.
pub(crate) fn parse_record(line: &str) -> Option<KmsgLine> {
    let (header, text) = line.split_once(';')?;
    let mut fields = header.split(',');
    let prio: u32 = fields.next()?.trim().parse().ok()?;
    let seq: u64 = fields.next()?.trim().parse().ok()?;
    Some(KmsgLine {
        seq,
        level: (prio & 7) as u8,
        facility: u8::try_from(prio >> 3).unwrap_or(u8::MAX),
        text: text.to_string(),
    })
}

/// Reads every record available now from the kmsg file at `path`, without blocking.
pub(crate) fn read_all(path: &Path) -> Result<Vec<KmsgLine>, KernelError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| KernelError::io(path, e))?;
    let mut records = Vec::new();
    // /dev/kmsg returns one record per read; a plain file (tests) returns many lines.
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = String::new();
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    records.extend(parse_record(line.trim_end_matches('\n')));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // EPIPE: records were overwritten before we read them; the next read goes on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(KernelError::io(path, e)),
        }
    }
    records.extend(parse_record(pending.trim_end()));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_levels() {
        let line = parse_record("4,1234,5678901,-;WARNING: CPU: 0 PID: 1 at foo").unwrap();
        assert_eq!(line.seq, 1234);
        assert_eq!(line.level, 4);
        assert!(is_kernel_warning(&line.text));
        assert!(line.from_kernel());
        // Facility 3 (daemon) << 3 | level 6.
        let daemon = parse_record("30,7,1,c;systemd: hi").unwrap();
        assert_eq!((daemon.level, daemon.facility), (6, 3));
        assert!(!daemon.from_kernel());
        // What `echo 'WARNING: x' > /dev/kmsg` gives: facility 1 (user), level 4.
        let user = parse_record("12,8,1,-;WARNING: x").unwrap();
        assert_eq!((user.level, user.facility), (4, 1));
        assert_eq!(parse_record(" SUBSYSTEM=acpi"), None);
        assert_eq!(parse_record("garbage"), None);
    }

    #[test]
    fn ordinary_lines_are_not_warnings() {
        assert!(!is_kernel_warning(
            "livepatch: 'kpersist_v1': patching complete"
        ));
        assert!(!is_kernel_warning("DEBUG: nothing"));
        assert!(is_kernel_warning("Oops: 0002 [#1] SMP"));
        assert!(is_kernel_warning("kernel BUG at mm/slub.c:42!"));
    }

    #[test]
    fn reads_a_plain_file_with_continuations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        std::fs::write(
            &path,
            "6,1,0,-;first\n SUBSYSTEM=x\n4,2,0,-;second\n6,3,0,-;third",
        )
        .unwrap();
        let lines = read_all(&path).unwrap();
        let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(lines[2].text, "third");
    }
}
