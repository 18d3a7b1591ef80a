//! Hold intervals written by every contender ("enter NAME MICROS" right after acquiring,
//! "leave NAME MICROS" right before releasing) and the checks run over them. Logged
//! intervals lie inside the true holds, so two logged intervals that overlap prove two
//! true holds overlapped.

use std::collections::HashMap;
use std::path::Path;

use crate::KitError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldInterval {
    pub holder: String,
    pub enter_micros: u64,
    pub leave_micros: u64,
}

#[derive(Clone, Debug, Default)]
pub struct HoldLog {
    pub intervals: Vec<HoldInterval>,
}

impl HoldLog {
    /// Reads every log file given and pairs each holder's enter and leave lines.
    pub fn read(paths: &[impl AsRef<Path>]) -> Result<Self, KitError> {
        let mut text = String::new();
        for path in paths {
            text.push_str(&std::fs::read_to_string(path)?);
            text.push('\n');
        }
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, KitError> {
        let mut open: HashMap<String, u64> = HashMap::new();
        let mut intervals = Vec::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let mut fields = line.split_whitespace();
            let (Some(event), Some(holder), Some(micros), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(KitError::HoldLog(format!("malformed line {line:?}")));
            };
            let micros: u64 = micros
                .parse()
                .map_err(|_| KitError::HoldLog(format!("bad time in {line:?}")))?;
            match event {
                "enter" => {
                    if open.insert(holder.to_string(), micros).is_some() {
                        return Err(KitError::HoldLog(format!("{holder} entered twice")));
                    }
                }
                "leave" => {
                    let enter = open.remove(holder).ok_or_else(|| {
                        KitError::HoldLog(format!("{holder} left without entering"))
                    })?;
                    intervals.push(HoldInterval {
                        holder: holder.to_string(),
                        enter_micros: enter,
                        leave_micros: micros,
                    });
                }
                other => return Err(KitError::HoldLog(format!("unknown event {other:?}"))),
            }
        }
        if let Some(holder) = open.keys().next() {
            return Err(KitError::HoldLog(format!("{holder} never left")));
        }
        intervals.sort_by_key(|interval| interval.enter_micros);
        Ok(HoldLog { intervals })
    }

    /// The largest number of holds in force at one instant.
    pub fn max_concurrent(&self) -> usize {
        let mut edges: Vec<(u64, i32)> = Vec::with_capacity(self.intervals.len() * 2);
        for interval in &self.intervals {
            edges.push((interval.enter_micros, 1));
            edges.push((interval.leave_micros, -1));
        }
        // A leave at the same microsecond as an enter closes first: touching is not overlapping.
        edges.sort_by_key(|&(at, delta)| (at, delta));
        let (mut now, mut most) = (0i32, 0i32);
        for (_, delta) in edges {
            now += delta;
            most = most.max(now);
        }
        most as usize
    }

    /// Pairs of intervals whose holds overlapped in time.
    pub fn overlapping_pairs(&self) -> Vec<(HoldInterval, HoldInterval)> {
        let mut pairs = Vec::new();
        for (i, first) in self.intervals.iter().enumerate() {
            for second in &self.intervals[i + 1..] {
                if second.enter_micros >= first.leave_micros {
                    break;
                }
                pairs.push((first.clone(), second.clone()));
            }
        }
        pairs
    }

    /// Gaps from one hold's leave to the next hold's enter, in microseconds, for a lock held by
    /// one holder at a time: the handoff latencies.
    pub fn handoff_gaps_micros(&self) -> Vec<u64> {
        self.intervals
            .windows(2)
            .map(|pair| pair[1].enter_micros.saturating_sub(pair[0].leave_micros))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_holds_do_not_overlap() {
        let log = HoldLog::parse("enter a 10\nleave a 20\nenter b 20\nleave b 30\n").unwrap();
        assert!(log.overlapping_pairs().is_empty());
        assert_eq!(log.max_concurrent(), 1);
        assert_eq!(log.handoff_gaps_micros(), vec![0]);
    }

    #[test]
    fn overlapping_holds_are_found() {
        let log = HoldLog::parse("enter a 10\nenter b 15\nleave a 20\nleave b 30\n").unwrap();
        assert_eq!(log.overlapping_pairs().len(), 1);
        assert_eq!(log.max_concurrent(), 2);
    }

    #[test]
    fn unbalanced_logs_are_rejected() {
        assert!(HoldLog::parse("enter a 10\n").is_err());
        assert!(HoldLog::parse("leave a 10\n").is_err());
        assert!(HoldLog::parse("enter a 10\nenter a 11\n").is_err());
    }
}
