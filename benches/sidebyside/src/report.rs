//! The table, the median over runs, the plot.

use std::fmt::Write;
use std::path::Path;

use plotters::prelude::*;

use crate::{Cell, Run, SystemRun};

/// One line about the machine: CPU model, cores, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {kernel}")
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_cells(cells: &[&Cell]) -> Cell {
    let Some(first) = cells.first() else {
        return Cell::default();
    };
    let m = |f: &dyn Fn(&Cell) -> f64| median(cells.iter().map(|c| f(c)).collect());
    Cell {
        system: first.system.clone(),
        op: first.op.clone(),
        clients: first.clients,
        ops: m(&|c| c.ops as f64) as u64,
        errors: m(&|c| c.errors as f64) as u64,
        secs: m(&|c| c.secs),
        ops_per_s: m(&|c| c.ops_per_s),
        p50_us: m(&|c| c.p50_us as f64) as u64,
        p90_us: m(&|c| c.p90_us as f64) as u64,
        p99_us: m(&|c| c.p99_us as f64) as u64,
        max_us: m(&|c| c.max_us as f64) as u64,
        cpu_us_per_op_node: m(&|c| c.cpu_us_per_op_node),
    }
}

fn median_system(runs: &[&SystemRun]) -> SystemRun {
    let pick = |get: &dyn Fn(&SystemRun) -> &Vec<Cell>| -> Vec<Cell> {
        let n = runs.iter().map(|r| get(r).len()).min().unwrap_or(0);
        (0..n)
            .map(|i| median_cells(&runs.iter().map(|r| &get(r)[i]).collect::<Vec<_>>()))
            .collect()
    };
    SystemRun {
        cells: pick(&|r| &r.cells),
        curve: pick(&|r| &r.curve),
    }
}

/// Every figure the median over the runs.
pub fn median_run(runs: &[Run]) -> Run {
    Run {
        etcd: median_system(&runs.iter().map(|r| &r.etcd).collect::<Vec<_>>()),
        raftkit: median_system(&runs.iter().map(|r| &r.raftkit).collect::<Vec<_>>()),
        fsync_p50_us: median(runs.iter().map(|r| r.fsync_p50_us as f64).collect()) as u64,
        quic_rtt_p50_us: median(runs.iter().map(|r| r.quic_rtt_p50_us as f64).collect()) as u64,
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn ops(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The side-by-side table, the floors and the targets.
pub fn table(run: &Run, machine: &str, runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nraftkit (kv serve x3, QUIC + mTLS, WAL) vs etcd (3 members), same machine, same run; 16-byte values; {}",
        if runs > 1 {
            format!("median of {runs} runs")
        } else {
            "one run".into()
        }
    );
    let _ = writeln!(s, "machine: {machine}\n");
    let _ = writeln!(
        s,
        "| cell | etcd ops/s | etcd p50 | etcd p99 | raftkit ops/s | raftkit p50 | raftkit p99 | throughput | p99 | CPU µs/write/node etcd | raftkit |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    // With `--only`, one side is empty: its columns and the ratios say "-".
    let rows = run.etcd.cells.len().max(run.raftkit.cells.len());
    for i in 0..rows {
        let (e, r) = (run.etcd.cells.get(i), run.raftkit.cells.get(i));
        let Some(any) = e.or(r) else { break };
        let name = match any.op.as_str() {
            "get" => format!("linearizable get, {} clients", any.clients),
            _ => format!(
                "put, {} client{}",
                any.clients,
                if any.clients == 1 { "" } else { "s" }
            ),
        };
        let cpu = |c: Option<&Cell>| match c {
            Some(c) if c.op == "put" => format!("{:.1}", c.cpu_us_per_op_node),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            opt(e, |c| ops(c.ops_per_s)),
            opt(e, |c| ms(c.p50_us)),
            opt(e, |c| ms(c.p99_us)),
            opt(r, |c| ops(c.ops_per_s)),
            opt(r, |c| ms(c.p50_us)),
            opt(r, |c| ms(c.p99_us)),
            both(e, r, |e, r| ratio(r.ops_per_s, e.ops_per_s)),
            both(e, r, |e, r| ratio(r.p99_us as f64, e.p99_us as f64)),
            cpu(e),
            cpu(r),
        );
    }
    let floor = run.fsync_p50_us + run.quic_rtt_p50_us;
    let one = run
        .raftkit
        .cells
        .iter()
        .find(|c| c.op == "put" && c.clients == 1);
    let _ = writeln!(
        s,
        "\nfloors (same run): fsync p50 {}, QUIC request/response p50 {}{}",
        ms(run.fsync_p50_us),
        ms(run.quic_rtt_p50_us),
        one.map_or_else(String::new, |c| format!(
            "; one client's put p50 is {:.2}x (fsync + round trip)",
            ratio(c.p50_us as f64, floor as f64)
        )),
    );
    let rows = run.etcd.curve.len().max(run.raftkit.curve.len());
    if rows > 0 {
        let _ = writeln!(s, "\nscaling (durable puts):\n");
        let _ = writeln!(
            s,
            "| clients | etcd ops/s | etcd p99 | raftkit ops/s | raftkit p99 | throughput |"
        );
        let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|");
        for i in 0..rows {
            let (e, r) = (run.etcd.curve.get(i), run.raftkit.curve.get(i));
            let Some(any) = e.or(r) else { break };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                any.clients,
                opt(e, |c| ops(c.ops_per_s)),
                opt(e, |c| ms(c.p99_us)),
                opt(r, |c| ops(c.ops_per_s)),
                opt(r, |c| ms(c.p99_us)),
                both(e, r, |e, r| ratio(r.ops_per_s, e.ops_per_s)),
            );
        }
    }
    s
}

/// A cell's figure, or "-" when that system did not run (`--only`).
fn opt(c: Option<&Cell>, f: impl Fn(&Cell) -> String) -> String {
    c.map_or_else(|| "-".into(), f)
}

/// A ratio of both systems' cells, or "-" when one did not run.
fn both(e: Option<&Cell>, r: Option<&Cell>, f: impl Fn(&Cell, &Cell) -> f64) -> String {
    match (e, r) {
        (Some(e), Some(r)) => format!("{:.2}x", f(e, r)),
        _ => "-".into(),
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Throughput and p99 against clients, both systems, log-scaled axes.
pub fn plot(run: &Run, path: &Path) -> Result<(), String> {
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .map_err(|e| format!("no font (install fonts-dejavu-core): {e}"))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "the font does not load".to_string())?;
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);
    let series = [
        ("raftkit", &run.raftkit.curve, BLUE),
        ("etcd", &run.etcd.curve, RED),
    ];
    let max_clients = series
        .iter()
        .flat_map(|s| s.1.iter().map(|c| c.clients))
        .max()
        .unwrap_or(1) as f64;
    // Throughput.
    let max_ops = series
        .iter()
        .flat_map(|s| s.1.iter().map(|c| c.ops_per_s))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("durable puts: throughput", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..max_clients * 1.2).log_scale(), 0.0..max_ops * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc("ops/s")
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, cells, color) in &series {
        let pts: Vec<(f64, f64)> = cells
            .iter()
            .map(|c| (c.clients as f64, c.ops_per_s))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    // p99 latency.
    let max_p99 = series
        .iter()
        .flat_map(|s| s.1.iter().map(|c| c.p99_us as f64 / 1000.0))
        .fold(0.1, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("durable puts: p99 latency", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1.0..max_clients * 1.2).log_scale(),
            (0.05..max_p99 * 1.5).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc("p99 (ms)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, cells, color) in &series {
        let pts: Vec<(f64, f64)> = cells
            .iter()
            .map(|c| (c.clients as f64, c.p99_us as f64 / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
