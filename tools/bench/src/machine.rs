//! This machine's raw figures, measured in the same run as the workloads, so that results can
//! be read as ratios of what the hardware gives.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Raw figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    /// Page-cache write bandwidth, 1 MiB writes, no sync (MB/s).
    pub disk_write_mbs: f64,
    /// 4 KiB write + fdatasync, one after another (syncs/s).
    pub fdatasync_per_s: f64,
    /// TCP bandwidth over 127.0.0.1, 64 KiB writes (MB/s).
    pub loopback_mbs: f64,
    /// Round trip of one byte over 127.0.0.1, median (µs).
    pub loopback_rtt_us: f64,
}

fn disk(dir: &std::path::Path, mib: usize, sync_for: Duration) -> std::io::Result<(f64, f64)> {
    let path = dir.join("raw-disk");
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(&path)?;
    let started = Instant::now();
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    let write_mbs = (mib as f64 * 1.048_576) / started.elapsed().as_secs_f64();
    drop(f);
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0xa5u8; 4096];
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < sync_for && syncs < 1_000_000 {
        f.write_all(&block)?;
        f.sync_data()?;
        syncs += 1;
    }
    let rate = syncs as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok((write_mbs, rate))
}

fn loopback(mib: usize, pings: usize) -> std::io::Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            if s.read(&mut buf)? == 0 {
                break;
            }
        }
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let chunk = vec![7u8; 1 << 16];
    let mut c = TcpStream::connect(addr)?;
    let started = Instant::now();
    for _ in 0..mib * 16 {
        c.write_all(&chunk)?;
    }
    drop(c);
    let mbs = (mib as f64 * 1.048_576) / started.elapsed().as_secs_f64();
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut rtts = Vec::with_capacity(pings);
    let mut b = [1u8; 1];
    for _ in 0..pings {
        let t0 = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        rtts.push(t0.elapsed().as_nanos() as u64);
    }
    drop(c);
    let _ = server.join();
    rtts.sort_unstable();
    let p50 = rtts.get(rtts.len() / 2).copied().unwrap_or(0) as f64 / 1000.0;
    Ok((mbs, p50))
}

/// Measures the machine; `quick` uses small sizes.
pub fn measure(quick: bool) -> Machine {
    let dir = tempfile::tempdir().expect("a temp folder");
    let (mib, sync_for, net_mib, pings) = if quick {
        (16, Duration::from_millis(200), 32, 500)
    } else {
        (256, Duration::from_secs(1), 512, 5000)
    };
    let (disk_write_mbs, fdatasync_per_s) = disk(dir.path(), mib, sync_for).unwrap_or((0.0, 0.0));
    let (loopback_mbs, loopback_rtt_us) = loopback(net_mib, pings).unwrap_or((0.0, 0.0));
    Machine {
        disk_write_mbs,
        fdatasync_per_s,
        loopback_mbs,
        loopback_rtt_us,
    }
}
