//! Git-synced folder vaults (SPEC §7). (The vault itself comes with the lead's work.)
pub mod ops;
pub mod peers;
