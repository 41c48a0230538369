//! Core pub/sub throughput, side by side: one publisher and one subscriber moving 1 KiB messages
//! through our standalone `natsd` and through the reference `nats-server`, both as separate
//! processes on 127.0.0.1, both driven by the same async-nats client. One iteration is one
//! message published and received. `scripts/bench-natsd.sh` prints the ratio of the medians.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(program: &str, port: u16) -> Proc {
    let child = Command::new(program)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{program} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

fn pubsub(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let payload = Bytes::from(vec![b'm'; 1024]);
    let mut g = c.benchmark_group("pubsub_1KiB");
    g.throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(5));
    for (name, program) in [
        ("natsd", env!("CARGO_BIN_EXE_natsd")),
        ("nats-server", "nats-server"),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let _server = start(program, port);
        let url = format!("nats://127.0.0.1:{port}");
        let (publisher, mut sub) = rt.block_on(async {
            let publisher = async_nats::connect(&url).await.unwrap();
            let subscriber = async_nats::ConnectOptions::new()
                .subscription_capacity(1 << 20)
                .connect(&url)
                .await
                .unwrap();
            let sub = subscriber.subscribe("bench").await.unwrap();
            // A round trip, so the subscription is in place before the first message.
            let _ = subscriber.request("_SYNC.roundtrip", Bytes::new()).await;
            (publisher, sub)
        });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let send = async {
                        for _ in 0..iters {
                            publisher.publish("bench", payload.clone()).await.unwrap();
                        }
                        publisher.flush().await.unwrap();
                    };
                    let receive = async {
                        for _ in 0..iters {
                            tokio::time::timeout(Duration::from_secs(30), sub.next())
                                .await
                                .expect("a message was lost")
                                .expect("subscription ended");
                        }
                    };
                    tokio::join!(send, receive);
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pubsub);
criterion_main!(benches);
