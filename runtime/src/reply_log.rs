//! A chunk's results, streamed by a local worker into its shared reply
//! region as each item finishes, and read back by the parent: whole once
//! the worker answers, or up to the item it was running when it died.
//!
//! Because the region is the parent's memory as much as the worker's, what
//! a worker wrote survives it: a crash on item k of a chunk costs item k
//! only. The parent reads the counters while the task runs, too, to move a
//! progress bar per item.
//!
//! The region starts with a header of 8-byte counters; failures are logged
//! after it as they happen; the values follow at `values_at`, as the
//! chunk's values chunk (see [`crate::codec`]) grows. At the end of a task
//! the failures and the trailer are appended after the values, so the whole
//! reply is one range of the region, copied out once by the parent.
//!
//! Nothing the parent reads here is trusted: every counter is checked
//! against the others and the region's size, and the bytes are copied out
//! (never borrowed: the worker may still write them, see
//! [`Region`](crate::sys::Region)) and go through the same decoder as any
//! reply.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::codec;
use crate::failure::Failure;
#[cfg(test)]
use crate::sys::ReplyCopy;
use crate::sys::{self, CopyFailed, InPlace, Region, Span};

/// The task whose counters follow (0: none yet).
const TASK: usize = 0;
/// Items started: item `RUNNING - 1` is running, or done if `DONE` says so.
const RUNNING: usize = 8;
/// Items finished, with their outcome written.
const DONE: usize = 16;
/// Where the values begin.
const VALUES_AT: usize = 24;
/// Bytes of values written.
const VALUES_LEN: usize = 32;
/// Bytes of failure log written, from [`LOG_AT`].
const LOG_LEN: usize = 40;
/// Entries in the failure log.
const FAILURES: usize = 48;
/// The last task whose answer is on the channel (set after sending it).
const ANSWERED: usize = 56;
/// Where the failure log begins.
const LOG_AT: usize = 64;
/// Where values begin until the failure log needs more room.
const FIRST_VALUES_AT: usize = 4096;

/// A worker's side: the reply to one task, written as its items finish.
pub(crate) struct ReplyStream<'a> {
    region: &'a mut Region,
    values_at: usize,
    /// Value bytes copied into the region so far.
    published: usize,
    /// The values' generation those bytes belong to.
    generation: u64,
    log_len: usize,
    failures: u64,
    /// Why the region could not take the results (out of memory), if so.
    broken: Option<std::io::Error>,
}

impl<'a> ReplyStream<'a> {
    /// Starts the reply to task number `task`, before its first item runs.
    pub(crate) fn begin(region: &'a mut Region, task: u64) -> Self {
        let mut stream = ReplyStream {
            region,
            values_at: FIRST_VALUES_AT,
            published: 0,
            generation: 0,
            log_len: 0,
            failures: 0,
            broken: None,
        };
        if let Err(err) = stream.region.reserve(FIRST_VALUES_AT) {
            stream.broken = Some(err);
            return stream;
        }
        for (word, value) in [
            (RUNNING, 0),
            (DONE, 0),
            (VALUES_AT, FIRST_VALUES_AT as u64),
            (VALUES_LEN, 0),
            (LOG_LEN, 0),
            (FAILURES, 0),
        ] {
            stream.store(word, value);
        }
        // Last: a parent that sees this task's number sees its counters reset.
        stream.store(TASK, task);
        stream
    }

    #[inline(always)]
    fn store(&self, offset: usize, value: u64) {
        self.region.head()[offset / 8].store(value, Ordering::Release);
    }

    /// Item `index` is about to run.
    #[inline]
    pub(crate) fn running(&self, index: usize) {
        self.store(RUNNING, index as u64 + 1);
    }

    /// Item `index` finished: `values` (of `generation`, see
    /// `codec::ChunkWriter::written`) hold every value so far, and
    /// `failure` is this item's, if it failed.
    #[inline(always)]
    pub(crate) fn finished(
        &mut self,
        index: usize,
        (values, generation): (&[u8], u64),
        failure: Option<&Failure>,
    ) {
        // A copy of this worker that the job forked returns here first:
        // it must not write the parent's region.
        sys::check_fork_guard();
        if self.broken.is_some() {
            return;
        }
        if let Some(failure) = failure
            && let Err(err) = self.log(index, failure)
        {
            self.broken = Some(err);
            return;
        }
        if let Err(err) = self.publish(values, generation) {
            self.broken = Some(err);
            return;
        }
        self.store(DONE, index as u64 + 1);
    }

    /// Copies what is new in `values` into the region.
    #[inline(always)]
    fn publish(&mut self, values: &[u8], generation: u64) -> std::io::Result<()> {
        let from = if generation == self.generation && values.len() >= self.published {
            self.published
        } else {
            0
        };
        let end = self.values_at + values.len();
        self.region.reserve(end)?;
        self.region
            .write_at(self.values_at + from, &values[from..])?;
        self.published = values.len();
        self.generation = generation;
        self.store(VALUES_LEN, values.len() as u64);
        Ok(())
    }

    /// Appends item `index`'s failure to the log, moving the values further
    /// up when the log needs the room.
    #[cold]
    fn log(&mut self, index: usize, failure: &Failure) -> std::io::Result<()> {
        let mut entry = Vec::new();
        codec::push_failure(&mut entry, index, failure);
        let log_end = LOG_AT + self.log_len + entry.len();
        if log_end > self.values_at {
            let values_at = (2 * log_end).next_multiple_of(FIRST_VALUES_AT);
            self.region.reserve(values_at + self.published)?;
            self.region
                .move_within(self.values_at, self.published, values_at)?;
            self.values_at = values_at;
            self.store(VALUES_AT, values_at as u64);
        }
        self.region.write_at(LOG_AT + self.log_len, &entry)?;
        self.log_len += entry.len();
        self.failures += 1;
        self.store(LOG_LEN, self.log_len as u64);
        self.store(FAILURES, self.failures);
        Ok(())
    }

    /// Starts values written straight into the region, one item at a time
    /// ([`ReplyStream::push_raw`]), after `header`, the values chunk's
    /// header (`codec::direct_header`). For results that are plain numbers,
    /// byte vectors or strings: no private buffer holds them first.
    pub(crate) fn begin_raw(&mut self, header: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        match self.publish(header, 0) {
            // Raw items are never rewritten: no later generation.
            Ok(()) => self.generation = u64::MAX,
            Err(err) => self.broken = Some(err),
        }
    }

    /// Item `index` finished with the value whose bytes are `head` then
    /// `body` (`codec::Direct`), appended to the values in the region
    /// (after [`ReplyStream::begin_raw`]): each byte is written once, from
    /// the value's own storage.
    #[inline(always)]
    pub(crate) fn push_raw(&mut self, index: usize, head: &[u8], body: &[u8]) {
        // As in `finished`: a forked copy must not write the parent's region.
        sys::check_fork_guard();
        if self.broken.is_some() {
            return;
        }
        let at = self.values_at + self.published;
        let len = head.len() + body.len();
        let written = self.region.reserve(at + len).and_then(|()| {
            self.region.write_at(at, head)?;
            if body.is_empty() {
                return Ok(());
            }
            self.region.write_at(at + head.len(), body)
        });
        if let Err(err) = written {
            self.broken = Some(err);
            return;
        }
        self.published += len;
        self.store(VALUES_LEN, self.published as u64);
        self.store(DONE, index as u64 + 1);
    }

    /// Starts `count` values of `width` bytes each (plain numbers, after
    /// [`ReplyStream::begin_raw`]), written by [`Words::push`]: room for all
    /// of them is made at once, and each is then one checked write and
    /// its counters. End with [`ReplyStream::words_written`].
    pub(crate) fn words(&mut self, count: usize, width: usize) -> Words<'_> {
        let published = self.published;
        let mut words = Words {
            span: None,
            published,
            written: 0,
            overflow: false,
        };
        if self.broken.is_some() {
            return words;
        }
        let at = self.values_at + published;
        let len = count.saturating_mul(width);
        if let Err(err) = self.region.reserve(at.saturating_add(len)) {
            self.broken = Some(err);
            return words;
        }
        match self.region.span(at, len) {
            Ok(span) => words.span = Some(span),
            Err(err) => self.broken = Some(err),
        }
        words
    }

    /// Ends a run of [`Words`]: `written`, what [`Words::finish`] said.
    pub(crate) fn words_written(&mut self, written: Option<usize>) {
        match written {
            Some(written) => self.published += written,
            None => self.broken = Some(std::io::Error::other("a chunk had more values than items")),
        }
    }

    /// Item `index` failed (after [`ReplyStream::begin_raw`]): logs it.
    #[cold]
    pub(crate) fn failed_raw(&mut self, index: usize, failure: &Failure) {
        sys::check_fork_guard();
        if self.broken.is_some() {
            return;
        }
        if let Err(err) = self.log(index, failure) {
            self.broken = Some(err);
            return;
        }
        self.store(DONE, index as u64 + 1);
    }

    /// Ends a reply whose values are all here (after
    /// [`ReplyStream::begin_raw`]): appends `tail` (`codec::reply_tail`)
    /// and returns the reply's length, to be sent in the answer.
    pub(crate) fn end_raw(mut self, tail: &[u8]) -> std::io::Result<u64> {
        sys::check_fork_guard();
        if let Some(err) = self.broken.take() {
            return Err(err);
        }
        let at = self.values_at + self.published;
        self.region.reserve(at + tail.len())?;
        self.region.write_at(at, tail)?;
        Ok((self.published + tail.len()) as u64)
    }

    /// Bytes of values written into the region so far.
    pub(crate) fn values_len(&self) -> usize {
        self.published
    }

    /// Writes the whole reply (`codec::ReplyWriter::finish`, whose values
    /// are already here) and returns its length, to be sent in the answer.
    pub(crate) fn end(mut self, reply: &[u8]) -> std::io::Result<u64> {
        sys::check_fork_guard();
        if let Some(err) = self.broken.take() {
            return Err(err);
        }
        // Each item published every value so far, and finishing a chunk
        // adds to its values only when it has none (its header).
        let from = self.published.min(reply.len());
        let end = self.values_at + reply.len();
        self.region.reserve(end)?;
        self.region
            .write_at(self.values_at + from, &reply[from..])?;
        Ok(reply.len() as u64)
    }
}

/// A run of plain numbers written into the reply region one item at a
/// time ([`ReplyStream::words`]), with the region's counters moved as each
/// is written, as [`ReplyStream::push_raw`] moves them.
pub(crate) struct Words<'r> {
    /// `None` once the region could not take the values (the stream says
    /// why).
    span: Option<Span<'r>>,
    /// Value bytes in the region before the run.
    published: usize,
    /// Value bytes written by the run.
    written: usize,
    /// More values came than the run had room for.
    overflow: bool,
}

impl Words<'_> {
    /// Item `index` is about to run.
    #[inline(always)]
    pub(crate) fn running(&self, index: usize) {
        if let Some(span) = &self.span {
            span.head()[RUNNING / 8].store(index as u64 + 1, Ordering::Release);
        }
    }

    /// Item `index` finished with the value whose bytes are `word`.
    #[inline(always)]
    pub(crate) fn push(&mut self, index: usize, word: &[u8]) {
        // As in `ReplyStream::finished`: a forked copy must not write the
        // parent's region.
        sys::check_fork_guard();
        let Some(span) = &mut self.span else {
            return;
        };
        if !span.put(self.written, word) {
            self.overflow = true;
            self.span = None;
            return;
        }
        self.written += word.len();
        let head = span.head();
        head[VALUES_LEN / 8].store((self.published + self.written) as u64, Ordering::Release);
        head[DONE / 8].store(index as u64 + 1, Ordering::Release);
    }

    /// The value bytes the run wrote, for [`ReplyStream::words_written`]
    /// (`None`: more values came than it had room for).
    pub(crate) fn finish(self) -> Option<usize> {
        (!self.overflow).then_some(self.written)
    }
}

/// Where a job's chunk puts its outcomes. Filled by `worker::invoke`.
#[doc(hidden)]
pub enum Output<'a> {
    /// The whole reply, once every item ran (cluster workers, tests).
    Collect(Vec<u8>),
    /// Outcomes in a local worker's shared region as each item finishes.
    Stream(Streaming<'a>),
}

/// [`Output::Stream`]'s state.
#[doc(hidden)]
pub struct Streaming<'a> {
    /// The region, until the items are decoded and the stream begins.
    region: Option<&'a mut Region>,
    task: u64,
    stream: Option<ReplyStream<'a>>,
    /// The reply's length, or why the region could not take it.
    written: std::io::Result<u64>,
}

impl<'a> Streaming<'a> {
    /// Outcomes of task number `task`, to go into `region`.
    pub(crate) fn new(region: &'a mut Region, task: u64) -> Self {
        Streaming {
            region: Some(region),
            task,
            stream: None,
            written: Ok(0),
        }
    }

    /// The reply's length, or why the region could not take it.
    pub(crate) fn written(self) -> std::io::Result<u64> {
        self.written
    }
}

impl<'a> Output<'a> {
    /// The items are decoded and about to run.
    pub(crate) fn begin(&mut self) {
        if let Output::Stream(streaming) = self
            && let Some(region) = streaming.region.take()
        {
            streaming.stream = Some(ReplyStream::begin(region, streaming.task));
        }
    }

    /// Item `index` is about to run.
    #[inline(always)]
    pub(crate) fn running(&self, index: usize) {
        if let Output::Stream(Streaming {
            stream: Some(stream),
            ..
        }) = self
        {
            stream.running(index);
        }
    }

    /// Item `index` finished; `reply` holds its outcome.
    #[inline(always)]
    pub(crate) fn finished<R: Serialize + 'static>(
        &mut self,
        index: usize,
        reply: &codec::ReplyWriter<R>,
    ) {
        if let Output::Stream(Streaming {
            stream: Some(stream),
            ..
        }) = self
        {
            stream.finished(
                index,
                reply.values_written(),
                reply.last_failure().map(|(_, failure)| failure),
            );
        }
    }

    /// The reply stream, when outcomes go into a local worker's region
    /// (after [`Output::begin`]).
    pub(crate) fn stream(&mut self) -> Option<&mut ReplyStream<'a>> {
        match self {
            Output::Stream(Streaming {
                stream: Some(stream),
                ..
            }) => Some(stream),
            _ => None,
        }
    }

    /// Every item ran, its values already in the region (see
    /// [`ReplyStream::begin_raw`]): the rest of the reply, `tail`.
    pub(crate) fn end_raw(&mut self, tail: &[u8]) {
        if let Output::Stream(streaming) = self {
            streaming.written = match streaming.stream.take() {
                Some(stream) => stream.end_raw(tail),
                None => Err(std::io::Error::other("the reply stream never began")),
            };
        }
    }

    /// Every item ran: the whole reply.
    pub(crate) fn end(&mut self, reply: Vec<u8>) {
        match self {
            Output::Collect(bytes) => *bytes = reply,
            Output::Stream(streaming) => {
                streaming.written = match streaming.stream.take() {
                    Some(stream) => stream.end(&reply),
                    None => Err(std::io::Error::other("the reply stream never began")),
                };
            }
        }
    }
}

/// The parent's side: makes `into` a private copy of the reply of `len`
/// bytes that the worker announced for task number `task`.
/// Fails with [`CopyFailed::Outside`] when the worker's counters do not
/// hold up (a protocol violation), [`CopyFailed::NoMemory`] when this
/// process cannot hold the copy (the reply itself may be fine). (Tests:
/// the driver and `Process` take [`reply_in_place`], then copy out whole
/// with `ReplyCopy::fill_from` only what cannot be decoded in place.)
#[cfg(test)]
pub(crate) fn reply(
    region: &mut Region,
    task: u64,
    len: u64,
    into: &mut ReplyCopy,
) -> Result<(), CopyFailed> {
    into.clear();
    into.fill_from(&reply_in_place(region, task, len)?)
}

/// The parent's side: the reply of `len` bytes that the worker announced
/// for task number `task`, where it lies in the region (read only by
/// copies, see [`InPlace`]). Fails with [`CopyFailed::Outside`] when the
/// worker's counters do not hold up (a protocol violation).
pub(crate) fn reply_in_place(
    region: &mut Region,
    task: u64,
    len: u64,
) -> Result<InPlace<'_>, CopyFailed> {
    let found = load(region, TASK);
    if found != task {
        return Err(CopyFailed::Outside(format!(
            "its reply region holds task {found}, not task {task}"
        )));
    }
    let values_at = usize::try_from(load(region, VALUES_AT)).unwrap_or(usize::MAX);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let end = values_at
        .checked_add(len)
        .filter(|_| values_at >= LOG_AT)
        .ok_or_else(|| {
            CopyFailed::Outside(format!(
                "a reply of {len} bytes at {values_at} is out of bounds"
            ))
        })?;
    region.view(end).map_err(CopyFailed::Outside)?;
    InPlace::new(region, values_at, len)
}

/// The header word at `offset`, as the other process last wrote it.
#[inline]
fn load(region: &Region, offset: usize) -> u64 {
    region.head()[offset / 8].load(Ordering::Acquire)
}

/// A worker's side: the answer to task number `task` is on the channel.
pub(crate) fn answered(region: &Region, task: u64) {
    region.head()[ANSWERED / 8].store(task, Ordering::Release);
}

/// The parent's side: whether the answer to task number `task` was sent.
#[inline]
pub(crate) fn is_answered(region: &Region, task: u64) -> bool {
    load(region, ANSWERED) == task
}

/// How many items of task number `task` have finished, while it runs.
pub(crate) fn items_done(region: &Region, task: u64) -> Option<usize> {
    if load(region, TASK) != task {
        return None;
    }
    usize::try_from(load(region, DONE)).ok()
}

/// What a worker that died during task number `task` (of `count` items)
/// had finished.
#[derive(Debug)]
pub(crate) struct Partial {
    /// Items finished.
    pub(crate) done: usize,
    /// Whether item `done` was running when the worker died (otherwise
    /// it died between items).
    pub(crate) crashed: bool,
    /// The reply for the first `done` items.
    pub(crate) reply: Vec<u8>,
}

/// Reads what the worker had finished of task number `task` when it died;
/// `None` if it had not begun the task's items, or its counters do not
/// make sense (then nothing of it can be trusted).
pub(crate) fn partial(region: &mut Region, task: u64, count: usize) -> Option<Partial> {
    if load(region, TASK) != task {
        return None;
    }
    let [running, done, values_at, values_len, log_len, failures] =
        [RUNNING, DONE, VALUES_AT, VALUES_LEN, LOG_LEN, FAILURES]
            .map(|at| usize::try_from(load(region, at)).ok());
    let (running, done, values_at, values_len, log_len, failures) = (
        running?,
        done?,
        values_at?,
        values_len?,
        log_len?,
        failures?,
    );
    let consistent = done <= running
        && running <= done + 1
        && running <= count
        && failures <= done
        && LOG_AT.checked_add(log_len)? <= values_at;
    if !consistent {
        return None;
    }
    region.view(values_at.checked_add(values_len)?).ok()?;
    let (mut values, mut log) = (Vec::new(), Vec::new());
    region.copy_out(values_at, values_len, &mut values).ok()?;
    region.copy_out(LOG_AT, log_len, &mut log).ok()?;
    let reply = codec::assemble_reply(values, failures, &log);
    Some(Partial {
        done,
        crashed: running == done + 1,
        reply,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ReplyReader, ReplyWriter};
    use crate::failure::FailureKind;

    fn outcomes(reply: &[u8], count: usize) -> Vec<Result<u64, Failure>> {
        let mut reader = ReplyReader::new(reply).unwrap();
        let out = (0..count).map(|_| reader.next::<u64>().unwrap()).collect();
        reader.finish().unwrap();
        out
    }

    /// Runs `count` items through a stream as a worker would, failing the
    /// items in `failing`, and stops before item `stop` if given.
    fn run(
        region: &mut Region,
        task: u64,
        count: usize,
        failing: &[usize],
        stop: Option<usize>,
    ) -> Option<u64> {
        let mut writer = ReplyWriter::<u64>::default();
        let mut stream = ReplyStream::begin(region, task);
        for index in 0..count {
            stream.running(index);
            if stop == Some(index) {
                return None;
            }
            if failing.contains(&index) {
                writer.failure(Failure::new(
                    FailureKind::Panicked,
                    format!("item {index} {}", "x".repeat(300)),
                ));
            } else {
                writer.value(&(index as u64 * 10)).unwrap();
            }
            stream.finished(
                index,
                writer.values_written(),
                writer.last_failure().map(|(_, f)| f),
            );
        }
        Some(stream.end(&writer.finish()).unwrap())
    }

    /// [`run`] through the raw path (`worker::invoke` for results that
    /// are plain numbers): values written straight into the region.
    fn run_raw(
        region: &mut Region,
        task: u64,
        count: usize,
        failing: &[usize],
        stop: Option<usize>,
    ) -> Option<u64> {
        let mut failures = Vec::new();
        let mut stream = ReplyStream::begin(region, task);
        stream.begin_raw(&codec::direct_header::<u64>().unwrap());
        for index in 0..count {
            stream.running(index);
            if stop == Some(index) {
                return None;
            }
            if failing.contains(&index) {
                let failure = Failure::new(
                    FailureKind::Panicked,
                    format!("item {index} {}", "x".repeat(300)),
                );
                stream.failed_raw(index, &failure);
                failures.push((index, failure));
            } else {
                let Some(codec::Direct::Word(word, width)) =
                    codec::direct_value(&(index as u64 * 10))
                else {
                    unreachable!()
                };
                stream.push_raw(index, &word[..width], &[]);
            }
        }
        let tail = codec::reply_tail(stream.values_len(), &failures);
        Some(stream.end_raw(&tail).unwrap())
    }

    #[test]
    fn raw_values_make_the_same_reply_as_the_general_path() {
        let mut copy = ReplyCopy::default();
        for failing in [
            &[][..],
            &[0],
            &[3, 99],
            &(0..100).step_by(3).collect::<Vec<_>>(),
        ] {
            let mut region = Region::create().unwrap();
            let len = run(&mut region, 5, 100, failing, None).unwrap();
            reply(&mut region, 5, len, &mut copy).unwrap();
            let general = copy.bytes().to_vec();
            let mut region = Region::create().unwrap();
            let len = run_raw(&mut region, 5, 100, failing, None).unwrap();
            reply(&mut region, 5, len, &mut copy).unwrap();
            assert_eq!(copy.bytes(), &general[..], "failing {failing:?}");
            assert_eq!(outcomes(copy.bytes(), 100).len(), 100);
        }
    }

    /// The reply of `values` through the general path and the direct one.
    fn both_paths<R: Serialize + 'static>(values: &[R]) -> (Vec<u8>, Vec<u8>) {
        let mut copy = ReplyCopy::default();
        let mut region = Region::create().unwrap();
        let mut writer = ReplyWriter::<R>::default();
        let mut stream = ReplyStream::begin(&mut region, 1);
        for (index, value) in values.iter().enumerate() {
            writer.value(value).unwrap();
            stream.finished(index, writer.values_written(), None);
        }
        let len = stream.end(&writer.finish()).unwrap();
        reply(&mut region, 1, len, &mut copy).unwrap();
        let general = copy.bytes().to_vec();
        let mut region = Region::create().unwrap();
        let mut stream = ReplyStream::begin(&mut region, 1);
        stream.begin_raw(&codec::direct_header::<R>().unwrap());
        for (index, value) in values.iter().enumerate() {
            match codec::direct_value(value).unwrap() {
                codec::Direct::Word(word, width) => stream.push_raw(index, &word[..width], &[]),
                codec::Direct::Bytes { length, len, bytes } => {
                    stream.push_raw(index, &length[..len], bytes)
                }
            }
        }
        let tail = codec::reply_tail(stream.values_len(), &[]);
        let len = stream.end_raw(&tail).unwrap();
        reply(&mut region, 1, len, &mut copy).unwrap();
        (general, copy.bytes().to_vec())
    }

    #[test]
    fn direct_values_of_every_kind_make_the_same_reply() {
        let (a, b) = both_paths(&[vec![], vec![7u8; 3 << 20], vec![1, 2, 3]]);
        assert_eq!(a, b);
        let mut reader = ReplyReader::new(&b).unwrap();
        assert_eq!(reader.next::<Vec<u8>>().unwrap().unwrap(), Vec::<u8>::new());
        assert_eq!(
            reader.next::<Vec<u8>>().unwrap().unwrap(),
            vec![7u8; 3 << 20]
        );
        let (a, b) = both_paths(&["".to_owned(), "é".repeat(200)]);
        assert_eq!(a, b);
        let (a, b) = both_paths(&[1.5f64, f64::NAN, -0.0]);
        assert_eq!(a, b);
        let (a, b) = both_paths(&[u32::MAX, 0]);
        assert_eq!(a, b);
        let (a, b) = both_paths(&[usize::MAX, 3]);
        assert_eq!(a, b);
        let (a, b) = both_paths(&[-1i32, 5]);
        assert_eq!(a, b);
    }

    #[test]
    fn a_crash_leaves_every_finished_raw_item() {
        let mut region = Region::create().unwrap();
        let failing: Vec<usize> = (0..40).step_by(2).collect();
        assert_eq!(run_raw(&mut region, 3, 50, &failing, Some(41)), None);
        assert_eq!(items_done(&region, 3), Some(41));
        let partial = partial(&mut region, 3, 50).unwrap();
        assert_eq!((partial.done, partial.crashed), (41, true));
        for (index, outcome) in outcomes(&partial.reply, 41).into_iter().enumerate() {
            match outcome {
                Ok(value) => assert_eq!(value, index as u64 * 10),
                Err(_) => assert!(failing.contains(&index)),
            }
        }
    }

    #[test]
    fn a_whole_reply_is_copied_out_whole() {
        let mut region = Region::create().unwrap();
        let len = run(&mut region, 7, 100_000, &[3, 99_999], None).unwrap();
        let mut copy = ReplyCopy::default();
        reply(&mut region, 7, len, &mut copy).unwrap();
        let got = outcomes(copy.bytes(), 100_000);
        for (index, outcome) in got.iter().enumerate() {
            match outcome {
                Ok(value) => assert_eq!(*value, index as u64 * 10),
                Err(failure) => assert!(failure.message.starts_with(&format!("item {index} "))),
            }
        }
        assert!(got[3].is_err() && got[99_999].is_err());
        assert!(
            reply(&mut region, 8, len, &mut copy)
                .unwrap_err()
                .to_string()
                .contains("task 7")
        );
        assert!(copy.bytes().is_empty());
        assert!(reply(&mut region, 7, u64::MAX, &mut copy).is_err());
        // A small reply after a large one is copied whole too.
        let small = run(&mut region, 9, 3, &[], None).unwrap();
        reply(&mut region, 9, small, &mut copy).unwrap();
        assert_eq!(outcomes(copy.bytes(), 3).len(), 3);
    }

    #[test]
    fn a_crash_leaves_every_finished_item() {
        let mut region = Region::create().unwrap();
        // Twenty failures move the values up past the first log space.
        let failing: Vec<usize> = (0..40).step_by(2).collect();
        assert_eq!(run(&mut region, 3, 50, &failing, Some(41)), None);
        assert_eq!(items_done(&region, 3), Some(41));
        assert_eq!(items_done(&region, 2), None);
        let partial = partial(&mut region, 3, 50).unwrap();
        assert_eq!((partial.done, partial.crashed), (41, true));
        for (index, outcome) in outcomes(&partial.reply, 41).into_iter().enumerate() {
            match outcome {
                Ok(value) => assert_eq!(value, index as u64 * 10),
                Err(_) => assert!(failing.contains(&index)),
            }
        }
        assert!(super::partial(&mut region, 4, 50).is_none());
        // Counters that contradict each other are not trusted.
        assert!(super::partial(&mut region, 3, 40).is_none());
    }

    #[test]
    fn a_crash_on_the_first_item_leaves_an_empty_reply() {
        let mut region = Region::create().unwrap();
        assert_eq!(run(&mut region, 1, 5, &[], Some(0)), None);
        let partial = partial(&mut region, 1, 5).unwrap();
        assert_eq!((partial.done, partial.crashed), (0, true));
        assert!(outcomes(&partial.reply, 0).is_empty());
    }
}
