//! Latency summaries: percentiles of a set of samples.

use std::time::Duration;

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Every sample, sorted, in milliseconds (for the plot).
    #[serde(skip)]
    pub sorted_ms: Vec<f64>,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        let mut sorted_ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        sorted_ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if sorted_ms.is_empty() {
                f64::NAN
            } else {
                sorted_ms[((sorted_ms.len() - 1) as f64 * q).round() as usize]
            }
        };
        Latency {
            count: sorted_ms.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            sorted_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let latency = Latency::of(&samples);
        assert_eq!(latency.count, 100);
        assert_eq!(latency.p50_ms, 51.0);
        assert_eq!(latency.p99_ms, 99.0);
        assert_eq!(latency.max_ms, 100.0);
    }
}
