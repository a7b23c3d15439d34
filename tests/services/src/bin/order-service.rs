//! order-service: see the crate's documentation.

fn main() -> std::process::ExitCode {
    meshguard_reference_services::server::main(meshguard_reference_services::Role::Order)
}
