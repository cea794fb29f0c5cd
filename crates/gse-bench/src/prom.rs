//! Figures out of a server's `GET /metrics` page (Prometheus text,
//! docs/API.md "Metrics and logs"): counters summed over their label sets,
//! and histograms, which the recorder renders as summaries: `<name>_sum`,
//! `<name>_count` and `<name>{quantile="1"}` (the largest value kept).

use serde::Serialize;

/// Count, mean and max of one server histogram, ms.
#[derive(Serialize, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// A histogram's raw figures on one page, seconds: two pages of one
/// process tell what happened between them ([`Histogram::since`]).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Histogram {
    pub sum: f64,
    pub count: f64,
    /// The largest value the recorder still keeps.
    pub max: f64,
}

impl Histogram {
    /// The histogram `name` among the lines whose labels contain `label`.
    pub fn read(text: &str, name: &str, label: &str) -> Self {
        let mut h = Histogram::default();
        for (metric, labels, value) in samples(text) {
            if !labels.contains(label) {
                continue;
            }
            match metric.strip_prefix(name) {
                Some("_sum") => h.sum += value,
                Some("_count") => h.count += value,
                Some("") if labels.contains("quantile=\"1\"") => h.max = f64::max(h.max, value),
                _ => {}
            }
        }
        h
    }

    /// Two processes' histograms of one metric as one.
    pub fn plus(&self, other: &Histogram) -> Histogram {
        Histogram {
            sum: self.sum + other.sum,
            count: self.count + other.count,
            max: self.max.max(other.max),
        }
    }

    /// Everything recorded so far.
    pub fn summary(&self) -> Summary {
        self.since(&Histogram::default())
    }

    /// What was recorded after `earlier` (a page of the same process);
    /// the max is the recorder's, which may reach back further.
    pub fn since(&self, earlier: &Histogram) -> Summary {
        let count = (self.count - earlier.count).max(0.0);
        let sum = (self.sum - earlier.sum).max(0.0);
        Summary {
            count: count as u64,
            mean_ms: round(if count > 0.0 {
                1000.0 * sum / count
            } else {
                0.0
            }),
            max_ms: round(1000.0 * self.max),
        }
    }
}

/// The summary `name` among the lines whose labels contain `label`.
pub fn summary(text: &str, name: &str, label: &str) -> Summary {
    Histogram::read(text, name, label).summary()
}

/// The counter `name`, summed over all its label sets; 0 when missing
/// (a counter appears on the page once first incremented).
pub fn counter(text: &str, name: &str) -> u64 {
    samples(text)
        .filter(|(metric, _, _)| *metric == name)
        .map(|(_, _, value)| value)
        .sum::<f64>() as u64
}

/// (metric, labels, value) of every sample line.
fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            Some((metric, labels, value))
        })
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE gse_link_heartbeats_total counter
gse_link_heartbeats_total 3800
gse_link_heartbeats_total_other 7
gse_link_tls_failures_total{reason=\"a\"} 2
gse_link_tls_failures_total{reason=\"b\"} 3
gse_link_heartbeat_store_seconds{quantile=\"1\"} 0.012
gse_link_heartbeat_store_seconds_sum 0.05
gse_link_heartbeat_store_seconds_count 10
";

    #[test]
    fn counters_sum_their_label_sets_and_match_the_whole_name() {
        assert_eq!(counter(PAGE, "gse_link_heartbeats_total"), 3800);
        assert_eq!(counter(PAGE, "gse_link_tls_failures_total"), 5);
        assert_eq!(counter(PAGE, "gse_link_heartbeat_batches_total"), 0);
    }

    #[test]
    fn a_histogram_since_an_earlier_page_counts_only_the_new_values() {
        let now = Histogram::read(PAGE, "gse_link_heartbeat_store_seconds", "");
        let before = Histogram {
            sum: 0.01,
            count: 2.0,
            max: 0.004,
        };
        let s = now.since(&before);
        assert_eq!((s.count, s.mean_ms, s.max_ms), (8, 5.0, 12.0));
        assert_eq!(now.summary().mean_ms, 5.0);
        let both = now.plus(&before);
        assert_eq!((both.count, both.max), (12.0, 0.012));
    }
}
