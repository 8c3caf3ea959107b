fn main() -> std::process::ExitCode {
    irec_fleet_sim::main()
}
