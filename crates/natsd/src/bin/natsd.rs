//! Runs the embedded NATS server on its own, with nats-server's basic flags:
//! `natsd [-a ADDR] [-p PORT] [--user U --pass P | --auth TOKEN] [--max_payload BYTES]`.

use std::process::ExitCode;

use natsd::{Auth, Server, ServerConfig};

fn usage() -> ExitCode {
    eprintln!(
        "usage: natsd [-a ADDR] [-p PORT] [--user USER --pass PASSWORD | --auth TOKEN] [--max_payload BYTES]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut cfg = ServerConfig::default();
    let (mut user, mut pass) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            if flag == "-h" || flag == "--help" {
                return usage();
            }
            eprintln!("natsd: {flag} needs a value");
            return usage();
        };
        match flag.as_str() {
            "-a" | "--addr" | "--net" => cfg.host = value,
            "-p" | "--port" => match value.parse() {
                Ok(p) => cfg.port = p,
                Err(_) => {
                    eprintln!("natsd: invalid port {value:?}");
                    return usage();
                }
            },
            "--user" => user = Some(value),
            "--pass" => pass = Some(value),
            "--auth" => cfg.auth = Some(Auth::Token(value)),
            "--max_payload" => match value.parse() {
                Ok(n) => cfg.max_payload = n,
                Err(_) => {
                    eprintln!("natsd: invalid max_payload {value:?}");
                    return usage();
                }
            },
            _ => {
                eprintln!("natsd: unknown flag {flag}");
                return usage();
            }
        }
    }
    match (user, pass) {
        (Some(user), Some(password)) => cfg.auth = Some(Auth::User { user, password }),
        (None, None) => {}
        _ => {
            eprintln!("natsd: --user and --pass go together");
            return usage();
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("natsd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let server = match Server::start(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("natsd: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("natsd: listening for clients on {}", server.client_url());
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("natsd: cannot watch for SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("natsd: shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
