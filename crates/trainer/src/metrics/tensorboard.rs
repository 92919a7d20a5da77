//! TensorBoard event files: what `SummaryWriter` (PyTorch) and `tf.summary` write, read by
//! TensorBoard's `EventAccumulator`.
//!
//! Format (tensorflow/core/util/event.proto, summary.proto; TFRecord framing from
//! tensorflow/core/lib/io/record_writer.cc): a file `events.out.tfevents.<unix s>.<host>.<pid>`
//! of records `u64 length (LE) | u32 masked_crc32c(length bytes) | data | u32
//! masked_crc32c(data)`, each data an `Event` protobuf. The first event carries
//! `file_version = "brain.Event:2"`; scalars are `Event { wall_time, step, summary { value {
//! tag, simple_value } } }`. Every file starts a session, `SessionLog { status: START }` at the
//! step the process starts from: the reader then drops earlier files' events at and after
//! that step (its orphan purge), so a resumed run's charts equal an uninterrupted run's and a
//! fresh start over an old `tb/` shows only the new run. Readers take a directory's files in
//! name order, so a new file's name sorts after every existing one (its timestamp field is
//! raised past theirs if the clock or pid order says otherwise).

use anyhow::{Context, Result};
use prost::Message;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `Event` (event.proto), the fields written here.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    /// Seconds since the epoch.
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `Summary` (summary.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `Summary.Value`: a tag and its `simple_value` (a oneof there, so it is written even when 0).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "Simple", tags = "2")]
    value: Option<Simple>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Simple {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

/// `SessionLog` (event.proto); status 1 = START.
#[derive(Clone, PartialEq, prost::Message)]
struct SessionLog {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SESSION_START: i32 = 1;

/// The CRC of TFRecord framing: CRC-32C, rotated right by 15 bits, plus a constant.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One event file in one directory (a TensorBoard "run").
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it, starting with the file-version event and a
    /// session START at `start_step` (see the module docs).
    ///
    /// # Errors
    /// The directory or file cannot be created or written.
    pub fn create(dir: &Path, start_step: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let now = wall_time();
        let stamp = next_stamp(dir, now as u64)?;
        let name = format!(
            "events.out.tfevents.{stamp:010}.{}.{}",
            collectives::host_name(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut w = Self {
            path,
            file: BufWriter::new(file),
        };
        w.event(Event {
            wall_time: now,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        w.event(Event {
            wall_time: now,
            step: start_step as i64,
            what: Some(What::SessionLog(SessionLog {
                status: SESSION_START,
            })),
        })?;
        w.flush()?;
        Ok(w)
    }

    /// Writes one event holding `values` (tag, value) for `step`. Non-finite values are
    /// left out (TensorBoard draws them as gaps either way).
    ///
    /// # Errors
    /// A write failure.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let value: Vec<SummaryValue> = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                value: Some(Simple::SimpleValue(*v as f32)),
            })
            .collect();
        if value.is_empty() {
            return Ok(());
        }
        self.event(Event {
            wall_time: wall_time(),
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        })
    }

    /// Flushes buffered events to the file.
    ///
    /// # Errors
    /// A write failure.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("write {}", self.path.display()))
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn event(&mut self, e: Event) -> Result<()> {
        let data = e.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(&data);
        rec.extend_from_slice(&masked_crc32c(&data).to_le_bytes());
        self.file
            .write_all(&rec)
            .with_context(|| format!("write {}", self.path.display()))
    }
}

/// The timestamp field for a new file in `dir`: `now`, or one past the largest of the
/// existing event files when that is not earlier (same second, clock set back).
fn next_stamp(dir: &Path, now: u64) -> Result<u64> {
    let mut stamp = now;
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let name = e
            .with_context(|| format!("read {}", dir.display()))?
            .file_name();
        let name = name.to_string_lossy();
        let field = name
            .strip_prefix("events.out.tfevents.")
            .and_then(|r| r.split('.').next())
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(t) = field {
            stamp = stamp.max(t + 1);
        }
    }
    Ok(stamp)
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow_vectors() {
        // CRC-32C check value (RFC 3720 B.4): "123456789" -> 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        // TensorFlow's mask, ((crc >> 15) | (crc << 17)) + 0xa282ead8 mod 2^32, of that
        // value, computed in Python.
        let want = 0xC78A_B0E5;
        assert_eq!(masked_crc32c(b"123456789"), want);
    }

    #[test]
    fn records_are_framed_and_decode_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), 7).unwrap();
        w.scalars(7, &[("lr".into(), 0.5), ("nan".into(), f64::NAN)])
            .unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(data));
            events.push(Event::decode(data).unwrap());
            at += 16 + len;
        }
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        assert_eq!(
            (events[1].step, &events[1].what),
            (7, &Some(What::SessionLog(SessionLog { status: 1 })))
        );
        let Some(What::Summary(s)) = &events[2].what else {
            panic!("{:?}", events[2]);
        };
        assert_eq!(s.value.len(), 1, "the NaN is left out");
        assert_eq!(s.value[0].tag, "lr");
        assert_eq!(s.value[0].value, Some(Simple::SimpleValue(0.5)));
    }

    #[test]
    fn a_new_file_sorts_after_the_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        // A file of a later second (clock set back, or the same second with a larger pid or
        // host name): the new file's name must still sort after it.
        let far = "events.out.tfevents.3999999999.otherhost.1";
        std::fs::write(dir.path().join(far), b"").unwrap();
        let w = EventWriter::create(dir.path(), 0).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.as_str() > far, "{name}");
        assert!(
            name.starts_with("events.out.tfevents.4000000000."),
            "{name}"
        );
    }
}
