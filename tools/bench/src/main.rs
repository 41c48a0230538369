//! `liftbridge-bench`: liftbridged against NATS JetStream on this machine, in one run.
//!
//! `liftbridge-bench [--quick] [--runs N] [--out FILE] [--plot FILE]` starts each system fresh
//! (liftbridged with its embedded NATS, liftbridged on `nats-server`, `nats-server -js`, and the
//! durable variants), runs the same workloads against each with Rust clients of the same
//! concurrency, and writes a table of medians and ratios, the machine's raw figures, and each
//! server's peak memory and CPU time. `liftbridge-bench serve ARGS` runs liftbridged itself
//! (the harness starts its servers that way, so they run the same code as `liftbridged`).

mod machine;
mod systems;
mod workloads;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Parser;
use systems::{Binaries, Kind, Running, Usage};
use workloads::Target;

#[derive(Debug, Parser)]
#[command(
    name = "liftbridge-bench",
    about = "liftbridged against NATS JetStream, side by side"
)]
struct Args {
    /// A few seconds in all: small counts, one run. For CI; the numbers mean little.
    #[arg(long)]
    quick: bool,
    /// Runs of everything; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Write the results into this Markdown file, between the `e2e` markers (the section is
    /// appended if absent). Printed to standard output in any case.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw throughput by message size into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Run only these workloads (comma-separated): async, replay, sync, e2e, ingest. Default:
    /// all of them.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run only these message sizes in bytes (comma-separated), of 100, 1024 and 16384.
    /// Default: all three.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// The nats-server for JetStream and external NATS.
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// The nats-server for JetStream with `sync_interval: always` (2.10 or later); default:
    /// `--nats-server`. When it does not support the setting, those rows are skipped.
    #[arg(long)]
    durable_nats_server: Option<PathBuf>,
}

const SIZES: [usize; 3] = [100, 1024, 16 * 1024];

/// The unit of the NATS ingest rows that count messages published and never recorded. Their
/// cells show the largest count of any run, not the median: a loss is never hidden.
const LOST: &str = "msgs lost";

/// One measured quantity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    order: u8,
    name: String,
    size: usize,
    /// Higher is better (throughput) or lower is better (latency).
    higher_better: bool,
    unit: &'static str,
}

#[derive(Default)]
struct Results {
    values: BTreeMap<Row, BTreeMap<Kind, Vec<f64>>>,
    usage: BTreeMap<Kind, Vec<Vec<(&'static str, Usage)>>>,
    machine: Vec<machine::Machine>,
    notes: Vec<String>,
}

impl Results {
    fn add(&mut self, row: Row, kind: Kind, v: f64) {
        self.values
            .entry(row)
            .or_default()
            .entry(kind)
            .or_default()
            .push(v);
    }
}

fn worst(v: &[f64]) -> f64 {
    v.iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f64::NAN, f64::max)
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Counts {
    /// The workloads to run; empty: all.
    only: Vec<String>,
    /// The message sizes to run; empty: all.
    sizes: Vec<usize>,
    async_msgs: fn(usize) -> usize,
    durable_msgs: fn(usize) -> usize,
    sync_msgs: usize,
    e2e_msgs: usize,
}

impl Counts {
    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }

    fn wants_size(&self, size: usize) -> bool {
        self.sizes.is_empty() || self.sizes.contains(&size)
    }
}

fn counts(quick: bool, only: Vec<String>, sizes: Vec<usize>) -> Counts {
    if quick {
        Counts {
            only,
            sizes,
            async_msgs: |_| 400,
            durable_msgs: |_| 100,
            sync_msgs: 50,
            e2e_msgs: 50,
        }
    } else {
        Counts {
            only,
            sizes,
            async_msgs: |s| match s {
                0..=128 => 200_000,
                129..=2048 => 100_000,
                _ => 20_000,
            },
            durable_msgs: |s| match s {
                0..=2048 => 8_000,
                _ => 3_000,
            },
            sync_msgs: 3000,
            e2e_msgs: 2000,
        }
    }
}

async fn run_system(
    kind: Kind,
    bins: &Binaries,
    c: &Counts,
    res: &mut Results,
) -> Result<(), String> {
    let sys = Running::start(kind, bins)?;
    let nats_url = sys.nats.clone();
    let target = if kind.is_liftbridge() {
        Target::Liftbridge(sys.addr.clone())
    } else {
        Target::JetStream(sys.addr.clone())
    };
    let durable = matches!(kind, Kind::LbDurable | Kind::JsDurable);
    let outcome = async {
        for size in SIZES.into_iter().filter(|s| c.wants_size(*s)) {
            let n = if durable {
                (c.durable_msgs)(size)
            } else {
                (c.async_msgs)(size)
            };
            for publishers in [1usize, 4] {
                let replayed = publishers == 1 && c.wants("replay");
                if !(c.wants("async") || replayed) {
                    continue;
                }
                let name = format!("a{size}p{publishers}");
                workloads::create(&target, &name).await?;
                let d = workloads::async_publish(&target, &name, size, n, publishers).await?;
                let per_s = (n / publishers * publishers) as f64 / d.as_secs_f64();
                if c.wants("async") {
                    let label = if durable {
                        "durable async publish"
                    } else {
                        "async publish"
                    };
                    res.add(
                        Row {
                            order: if durable { 6 } else { 1 },
                            name: format!("{label}, {publishers} pub"),
                            size,
                            higher_better: true,
                            unit: "msgs/s",
                        },
                        kind,
                        per_s,
                    );
                }
                if publishers == 1 && !durable && c.wants("replay") {
                    let d = workloads::replay(&target, &name, n).await?;
                    res.add(
                        Row {
                            order: 3,
                            name: "replay from the start".into(),
                            size,
                            higher_better: true,
                            unit: "msgs/s",
                        },
                        kind,
                        n as f64 / d.as_secs_f64(),
                    );
                }
            }
            if durable {
                continue;
            }
            for publishers in [1usize, 4] {
                if !c.wants("ingest") {
                    break;
                }
                let name = format!("n{size}p{publishers}");
                workloads::create(&target, &name).await?;
                let (d, recorded) =
                    workloads::nats_ingest(&target, &nats_url, &name, size, n, publishers).await?;
                let sent = (n / publishers * publishers) as u64;
                let rows = [
                    ("msgs/s", true, recorded as f64 / d.as_secs_f64()),
                    (LOST, false, sent.saturating_sub(recorded) as f64),
                ];
                for (unit, higher_better, v) in rows {
                    res.add(
                        Row {
                            order: 5,
                            name: format!("NATS ingest, {publishers} pub"),
                            size,
                            higher_better,
                            unit,
                        },
                        kind,
                        v,
                    );
                }
            }
            let name = format!("s{size}");
            workloads::create(&target, &name).await?;
            if size == SIZES[0] && c.wants("sync") {
                // Once per system: the round trip of a request that does no storage work.
                let mut lat = workloads::info_requests(&target, &name, c.sync_msgs).await?;
                for (p, tag) in [(50.0, "p50"), (99.0, "p99")] {
                    res.add(
                        Row {
                            order: 2,
                            name: format!("metadata request latency {tag}"),
                            size: 0,
                            higher_better: false,
                            unit: "µs",
                        },
                        kind,
                        workloads::percentile_us(&mut lat, p),
                    );
                }
            }
            let mut lat = if c.wants("sync") {
                workloads::sync_publish(&target, &name, size, c.sync_msgs).await?
            } else {
                Vec::new()
            };
            for (p, tag) in [(50.0, "p50"), (99.0, "p99"), (99.9, "p99.9")] {
                if lat.is_empty() {
                    break;
                }
                res.add(
                    Row {
                        order: 2,
                        name: format!("sync publish latency {tag}"),
                        size,
                        higher_better: false,
                        unit: "µs",
                    },
                    kind,
                    workloads::percentile_us(&mut lat, p),
                );
            }
            if !c.wants("e2e") {
                continue;
            }
            let name = format!("e{size}");
            workloads::create(&target, &name).await?;
            let mut lat = workloads::end_to_end(&target, &name, size, c.e2e_msgs).await?;
            for (p, tag) in [(50.0, "p50"), (99.0, "p99")] {
                res.add(
                    Row {
                        order: 4,
                        name: format!("end-to-end latency {tag}"),
                        size,
                        higher_better: false,
                        unit: "µs",
                    },
                    kind,
                    workloads::percentile_us(&mut lat, p),
                );
            }
        }
        Ok::<(), String>(())
    }
    .await;
    let usage = sys.stop();
    res.usage.entry(kind).or_default().push(usage);
    outcome
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 100.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

fn size_label(s: usize) -> String {
    if s == 0 {
        "–".into()
    } else if s >= 1024 {
        format!("{} KiB", s / 1024)
    } else {
        format!("{s} B")
    }
}

fn report(res: &Results, args: &Args, runs: usize, versions: &str) -> String {
    let mut out = String::new();
    let m =
        |f: fn(&machine::Machine) -> f64| median(&res.machine.iter().map(f).collect::<Vec<_>>());
    let _ = writeln!(
        out,
        "Runs: {runs} ({}), medians shown. {versions}.\n",
        if args.quick {
            "quick mode: tiny counts, for CI only"
        } else {
            "full"
        }
    );
    let _ = writeln!(
        out,
        "Machine, measured in the same run: page-cache writes {} MB/s, fdatasync {} /s, \
         loopback TCP {} MB/s, loopback round trip {} µs.\n",
        fmt_num(m(|x| x.disk_write_mbs)),
        fmt_num(m(|x| x.fdatasync_per_s)),
        fmt_num(m(|x| x.loopback_mbs)),
        fmt_num(m(|x| x.loopback_rtt_us)),
    );
    let _ = writeln!(
        out,
        "Ratios are liftbridge / JetStream for each row: above 1 is better for throughput, below 1 \
         is better for latency. Async publishes keep {} messages in flight per publisher on both \
         sides.\n",
        workloads::WINDOW
    );
    let _ = writeln!(
        out,
        "| workload | size | liftbridge (embedded NATS) | liftbridge (nats-server) | JetStream | ratio embedded | ratio nats-server |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (row, by) in res.values.iter().filter(|(r, _)| r.order < 6) {
        let summary = if row.unit == LOST { worst } else { median };
        let med = |k: Kind| by.get(&k).map_or(f64::NAN, |v| summary(v));
        let (e, x, j) = (
            med(Kind::LbEmbedded),
            med(Kind::LbExternal),
            med(Kind::JetStream),
        );
        let mbs = |v: f64| {
            if row.unit == "msgs/s" && v.is_finite() {
                format!(" ({} MB/s)", fmt_num(v * row.size as f64 / 1e6))
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {}{} | {}{} | {}{} | {} | {} |",
            row.name,
            row.unit,
            size_label(row.size),
            fmt_num(e),
            mbs(e),
            fmt_num(x),
            mbs(x),
            fmt_num(j),
            mbs(j),
            fmt_num(e / j),
            fmt_num(x / j)
        );
    }
    let durable: Vec<_> = res.values.iter().filter(|(r, _)| r.order == 6).collect();
    if !durable.is_empty() {
        let _ = writeln!(
            out,
            "\nDurable: every acked message is on stable storage (liftbridge `streams.sync.policy: always`, group commit; JetStream `sync_interval: always`).\n"
        );
        let _ = writeln!(
            out,
            "| workload | size | liftbridge, sync always | JetStream, sync always | ratio |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for (row, by) in durable {
            let med = |k: Kind| by.get(&k).map_or(f64::NAN, |v| median(v));
            let (l, j) = (med(Kind::LbDurable), med(Kind::JsDurable));
            let _ = writeln!(
                out,
                "| {} ({}) | {} | {} | {} | {} |",
                row.name,
                row.unit,
                size_label(row.size),
                fmt_num(l),
                fmt_num(j),
                fmt_num(l / j)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nServers' peak memory and CPU time per run (median over runs):\n"
    );
    let _ = writeln!(out, "| system | process | peak RSS (MiB) | CPU (s) |");
    let _ = writeln!(out, "|---|---|---|---|");
    for (kind, runs) in &res.usage {
        let names: Vec<&str> = runs
            .first()
            .map(|r| r.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            let rss: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.get(i))
                .map(|(_, u)| u.peak_rss_kib as f64 / 1024.0)
                .collect();
            let cpu: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.get(i))
                .map(|(_, u)| u.cpu_seconds)
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                kind.label(),
                name,
                fmt_num(median(&rss)),
                fmt_num(median(&cpu))
            );
        }
    }
    for n in &res.notes {
        let _ = writeln!(out, "\n{n}");
    }
    out
}

fn section_key(only: &[String], sizes: &[usize]) -> String {
    let mut key = String::from("e2e");
    for w in only {
        key.push('-');
        key.push_str(w);
    }
    for s in sizes {
        key.push_str(&format!("-{s}"));
    }
    key
}

/// Writes `body` into the Markdown file between the markers of its section: `e2e` for a run of
/// every workload, `e2e-ingest` (and so on) for a run of some, so that a partial run never
/// replaces the full table. A missing section is appended.
fn write_section(path: &Path, key: &str, body: &str) -> std::io::Result<()> {
    let (start, end) = (
        format!("<!-- {key}:start -->"),
        format!("<!-- {key}:end -->"),
    );
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{start}\n{body}{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], section, &old[b + end.len()..]),
        _ => format!("{old}\n## End to end, against NATS JetStream ({key})\n\n{section}\n"),
    };
    std::fs::write(path, new)
}

fn plot(res: &Results, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no DejaVuSans.ttf for the plot's text (Debian: fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "bad font")?;
    let series: Vec<(Kind, Vec<(f64, f64)>)> =
        [Kind::LbEmbedded, Kind::LbExternal, Kind::JetStream]
            .into_iter()
            .map(|k| {
                let pts = res
                    .values
                    .iter()
                    .filter(|(r, _)| r.order == 1 && r.name.ends_with("1 pub"))
                    .filter_map(|(r, by)| by.get(&k).map(|v| ((r.size as f64).log2(), median(v))))
                    .collect();
                (k, pts)
            })
            .collect();
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Async publish with acks, 1 publisher", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(6.0f64..14.5f64, 0.0..max * 1.15)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("message size")
        .y_desc("messages per second")
        .x_label_formatter(&|x| size_label(2f64.powf(*x).round() as usize))
        .x_labels(9)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for ((kind, pts), color) in series.iter().zip([BLUE, GREEN, RED]) {
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
            .map_err(|e| e.to_string())?
            .label(kind.label())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 5, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// mimalloc, as `liftbridged` uses, for the servers this binary runs with `serve` and for the
/// clients of both systems alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("serve") {
        let flags = liftbridged::Flags::parse_from(
            std::iter::once("liftbridged".to_string()).chain(argv[2..].iter().cloned()),
        );
        let cfg = match liftbridged::Config::load(&flags) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("liftbridged: {e}");
                std::process::exit(2);
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        std::process::exit(rt.block_on(liftbridged::run(cfg)));
    }
    let args = Args::parse();
    let bins = Binaries {
        nats_server: args.nats_server.clone(),
        durable_nats_server: args
            .durable_nats_server
            .clone()
            .unwrap_or_else(|| args.nats_server.clone()),
    };
    let runs = if args.quick { 1 } else { args.runs.max(1) };
    let c = counts(args.quick, args.only.clone(), args.sizes.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut res = Results::default();
    let durable_js = systems::supports_sync_always(&bins.durable_nats_server);
    let versions = format!(
        "JetStream: {}; durable JetStream: {}",
        systems::version(&bins.nats_server),
        if durable_js {
            systems::version(&bins.durable_nats_server)
        } else {
            "not measured".into()
        }
    );
    if !durable_js {
        res.notes.push(format!(
            "JetStream with `sync_interval: always` was not measured: {} does not accept the setting \
             (it needs nats-server 2.10 or later; pass one with `--durable-nats-server`).",
            bins.durable_nats_server.display()
        ));
    }
    let mut failed = false;
    for run in 0..runs {
        eprintln!("run {} of {runs}: measuring the machine", run + 1);
        res.machine.push(machine::measure(args.quick));
        let mut kinds = vec![
            Kind::LbEmbedded,
            Kind::LbExternal,
            Kind::JetStream,
            Kind::LbDurable,
        ];
        if durable_js {
            kinds.push(Kind::JsDurable);
        }
        // The durable systems run only the async workload.
        if !c.wants("async") {
            kinds.retain(|k| !matches!(k, Kind::LbDurable | Kind::JsDurable));
        }
        for kind in kinds {
            eprintln!("run {} of {runs}: {}", run + 1, kind.label());
            if let Err(e) = rt.block_on(run_system(kind, &bins, &c, &mut res)) {
                eprintln!("  failed: {e}");
                res.notes
                    .push(format!("{} failed in run {}: {e}", kind.label(), run + 1));
                failed = true;
            }
        }
    }
    let text = report(&res, &args, runs, &versions);
    println!("{text}");
    if let Some(out) = &args.out
        && let Err(e) = write_section(out, &section_key(&args.only, &args.sizes), &text)
    {
        eprintln!("cannot write {}: {e}", out.display());
        failed = true;
    }
    if let Some(p) = &args.plot
        && let Err(e) = plot(&res, p)
    {
        eprintln!("no plot: {e}");
    }
    std::process::exit(if failed { 1 } else { 0 });
}
