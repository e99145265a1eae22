//! A bounded, readable trace of one run's events (the `replay` command).

/// What to keep.
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// Lines kept; later ones are counted, not kept.
    pub max_events: usize,
    /// Keep only events about this key (e.g. `s:{0000042}`); faults, heal and
    /// anti-entropy lines are always kept.
    pub key: Option<String>,
    /// Skip the events before this virtual time, ms.
    pub from_ms: u64,
}

/// The trace being written.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    options: TraceOptions,
    lines: Vec<String>,
    omitted: u64,
}

impl Trace {
    /// An empty trace.
    pub fn new(options: TraceOptions) -> Trace {
        Trace {
            options,
            lines: Vec::new(),
            omitted: 0,
        }
    }

    /// True when an event about `key` (`None`: about the whole cluster) at
    /// `now_us` is wanted; counts it as omitted when the trace is full.
    pub fn wants(&mut self, key: Option<&str>, now_us: u64) -> bool {
        if now_us / 1000 < self.options.from_ms {
            return false;
        }
        if let (Some(wanted), Some(key)) = (&self.options.key, key) {
            if wanted != key {
                return false;
            }
        }
        if self.lines.len() >= self.options.max_events {
            self.omitted += 1;
            return false;
        }
        true
    }

    /// Adds a line stamped with the virtual time.
    pub fn push(&mut self, now_us: u64, line: String) {
        self.lines.push(format!(
            "{:>7}.{:03} ms  {line}",
            now_us / 1000,
            now_us % 1000
        ));
    }

    /// The lines kept.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Events that matched but did not fit.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_is_bounded_and_filtered() {
        let mut trace = Trace::new(TraceOptions {
            max_events: 2,
            key: Some("k".into()),
            from_ms: 1,
        });
        assert!(!trace.wants(Some("k"), 500), "before from_ms");
        assert!(!trace.wants(Some("other"), 2_000));
        for at in [2_000, 3_000, 4_000] {
            if trace.wants(None, at) {
                trace.push(at, "event".into());
            }
        }
        assert_eq!(trace.lines().len(), 2);
        assert_eq!(trace.omitted(), 1);
        assert_eq!(trace.lines()[0], "      2.000 ms  event");
    }
}
