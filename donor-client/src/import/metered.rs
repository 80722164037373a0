//! A reader wrapper that enforces the per-record size limits and counts consumed lines.
//!
//! The parsers (serde_json, csv, quick-xml) own their reader, so the importer keeps a [`Meter`] handle to the
//! same counters: it marks the start of each record, and the wrapper fails the read with an I/O error once
//! more than the limit has been read since the mark. The importer then sees [`Meter::tripped`] and reports
//! [`ImportError::LimitExceeded`](super::ImportError::LimitExceeded) instead of the I/O error. This is what
//! bounds memory for a record that never ends (a CSV field without a closing quote, an XML tag without `>`,
//! a JSON string of gigabytes).

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

#[derive(Debug, Default)]
struct State {
    since_mark: Cell<u64>,
    limit: Cell<u64>,
    tripped: Cell<bool>,
    eof: Cell<bool>,
    newlines: Cell<u64>,
}

/// Shared view of a [`Metered`] reader's counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter(Rc<State>);

impl Meter {
    pub(crate) fn new(limit: u64) -> Self {
        let meter = Meter::default();
        meter.0.limit.set(limit);
        meter
    }

    /// Starts a new record: the limit applies from here.
    pub(crate) fn mark(&self) {
        self.0.since_mark.set(0);
    }

    /// Whether a read failed because the limit was exceeded.
    pub(crate) fn tripped(&self) -> bool {
        self.0.tripped.get()
    }

    /// Whether the underlying reader reported end of input.
    pub(crate) fn eof(&self) -> bool {
        self.0.eof.get()
    }

    /// Newlines consumed through `BufRead::consume` (the XML importer's line numbers).
    pub(crate) fn newlines(&self) -> u64 {
        self.0.newlines.get()
    }

    fn add(&self, n: u64) {
        self.0
            .since_mark
            .set(self.0.since_mark.get().saturating_add(n));
    }

    fn check(&self) -> io::Result<()> {
        if self.0.since_mark.get() > self.0.limit.get() {
            self.0.tripped.set(true);
            return Err(io::Error::other("record exceeds the size limit"));
        }
        Ok(())
    }
}

/// A reader that counts what passes through it into a [`Meter`].
#[derive(Debug)]
pub(crate) struct Metered<R> {
    inner: R,
    meter: Meter,
}

impl<R> Metered<R> {
    pub(crate) fn new(inner: R, meter: Meter) -> Self {
        Metered { inner, meter }
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.meter.check()?;
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.meter.0.eof.set(true);
        }
        self.meter.add(n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Metered<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.meter.check()?;
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            self.meter.0.eof.set(true);
        }
        Ok(buf)
    }

    fn consume(&mut self, amt: usize) {
        // `fill_buf` on a non-empty buffer returns the buffered bytes again without reading, so this sees
        // exactly the bytes being consumed.
        if let Ok(buf) = self.inner.fill_buf() {
            let taken = &buf[..amt.min(buf.len())];
            let newlines = taken.iter().filter(|&&b| b == b'\n').count() as u64;
            self.meter
                .0
                .newlines
                .set(self.meter.0.newlines.get() + newlines);
        }
        self.meter.add(amt as u64);
        self.inner.consume(amt);
    }
}
