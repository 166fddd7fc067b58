//! Process figures read from `/proc/self` at scrape time (resident memory,
//! open descriptors, CPU time), under the names Prometheus' own clients use.
//!
//! Must not: fail a scrape: a figure that cannot be read is left out.

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Process figures from `/proc/self`, the names Prometheus' own clients use.
#[derive(Debug)]
pub(super) struct ProcessCollector;

/// `/proc` reports CPU time in USER_HZ, which Linux fixes at 100 for userspace.
const USER_HZ: f64 = 100.0;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        if let Some(kib) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
        {
            let g = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(kib * 1024).encode(g)?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let n = i64::try_from(dir.count()).unwrap_or(i64::MAX);
            let g = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(n).encode(g)?;
        }
        if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
        {
            let c = encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time used",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(ticks as f64 / USER_HZ).encode(c)?;
        }
        Ok(())
    }
}
