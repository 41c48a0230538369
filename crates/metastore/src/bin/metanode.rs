//! Runs one metadata node on its own, for tests and experiments:
//!
//! `metanode --id ID --data DIR --nats URL (--seed | --join | --peers A,B,C) [--namespace NS] [--tick-ms N]`
//!
//! It prints one line per role change (`ROLE leader <term>` / `ROLE follower <term>`) and per
//! applied event (`APPLIED <index> <recovered|new> <event>`), and the streams after a snapshot
//! restore (`RESTORED <index> [names]`). It runs until killed.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use metastore::service::{Bootstrap, MetaConfig, Metastore, WatchEvent};
use natsbridge::{Connection, NatsConfig, Subjects};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut id, mut data, mut nats, mut bootstrap, mut ns, mut tick) =
        (None, None, None, None, None, 100u64);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seed" => bootstrap = Some(Bootstrap::Seed),
            "--join" => bootstrap = Some(Bootstrap::Join),
            _ => {
                let Some(v) = args.next() else {
                    eprintln!("metanode: {flag} needs a value");
                    return ExitCode::from(2);
                };
                match flag.as_str() {
                    "--id" => id = Some(v),
                    "--data" => data = Some(v),
                    "--nats" => nats = Some(v),
                    "--namespace" => ns = Some(v),
                    "--peers" => {
                        bootstrap =
                            Some(Bootstrap::Peers(v.split(',').map(str::to_owned).collect()))
                    }
                    "--tick-ms" => tick = v.parse().unwrap_or(100),
                    _ => {
                        eprintln!("metanode: unknown flag {flag}");
                        return ExitCode::from(2);
                    }
                }
            }
        }
    }
    let (Some(id), Some(data), Some(nats), Some(bootstrap)) = (id, data, nats, bootstrap) else {
        eprintln!(
            "usage: metanode --id ID --data DIR --nats URL (--seed | --join | --peers A,B,C)"
        );
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("metanode: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let cfg_nats = NatsConfig {
            servers: vec![nats],
            ..NatsConfig::default()
        };
        let conn = match Connection::connect(&cfg_nats, &format!("LIFT.metanode.{id}.raft")).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("metanode: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut cfg = MetaConfig::new(id, data, bootstrap);
        cfg.tick = Duration::from_millis(tick);
        if let Some(ns) = ns {
            match Subjects::new(&ns) {
                Ok(s) => cfg.subjects = s,
                Err(e) => {
                    eprintln!("metanode: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let store = match Metastore::start(cfg, conn).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("metanode: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut watch = store.watch();
        let mut out = std::io::stdout();
        loop {
            let line = match watch.recv().await {
                Ok(WatchEvent::Role { leader, term }) => {
                    format!("ROLE {} {term}", if leader { "leader" } else { "follower" })
                }
                Ok(WatchEvent::SecondSeed { server }) => format!("SECOND_SEED {server}"),
                Ok(WatchEvent::Restored { index }) => {
                    let streams =
                        store.with_state(|f| f.streams().keys().cloned().collect::<Vec<_>>());
                    format!("RESTORED {index} {streams:?}")
                }
                Ok(WatchEvent::Applied {
                    index,
                    recovered,
                    event,
                }) => {
                    format!(
                        "APPLIED {index} {} {event:?}",
                        if recovered { "recovered" } else { "new" }
                    )
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => format!("LAGGED {n}"),
                Err(_) => return ExitCode::SUCCESS,
            };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return ExitCode::SUCCESS;
            }
        }
    })
}
