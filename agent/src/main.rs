fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let p = kubetune_agent::probe::Probe::load();
    println!("{p:?}");
    if let Ok(p) = p {
        std::thread::sleep(std::time::Duration::from_secs(3));
        println!("{:?}", p.stats());
        println!("{:?}", p.listeners());
    }
}
