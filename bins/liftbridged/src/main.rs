//! The `liftbridged` binary; see the library for what it does.

use clap::Parser;

/// mimalloc instead of the system allocator: per message the server allocates and frees many
/// small buffers across threads, where glibc's allocator spent about a quarter of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let flags = liftbridged::Flags::parse();
    let cfg = match liftbridged::Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("liftbridged: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("liftbridged: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(liftbridged::run(cfg));
    std::process::exit(code);
}
