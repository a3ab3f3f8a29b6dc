//! Where the interception lives: flags shared by `run` and `cleanup`, which must agree on them
//! (cleanup removes exactly what run installed).

use clap::Args;

use crate::netfilter::RoutingConfig;
use crate::units::parse_mark;

#[derive(Debug, Clone, Args)]
pub struct InterceptionArgs {
    /// Name of the nftables `inet` table tpvs owns (replaced whole on every change).
    #[arg(long, default_value = "tpvs", value_parser = parse_table_name)]
    pub nft_table: String,
    /// Firewall mark of intercepted packets; selects the policy-routing table.
    #[arg(long, default_value = "0x7470", value_parser = parse_mark)]
    pub fwmark: u32,
    /// Policy-routing table holding the `local` default route to lo.
    #[arg(long, default_value_t = 7470, value_parser = clap::value_parser!(u32).range(1..=0xfffe_ffff))]
    pub route_table: u32,
}

impl InterceptionArgs {
    /// The policy-routing half of what these flags name (the rule and its table).
    pub fn routing(&self) -> RoutingConfig {
        RoutingConfig { mark: self.fwmark, table: self.route_table }
    }
}

fn parse_table_name(s: &str) -> Result<String, String> {
    // The name is spliced into nft's input: allow only what nft accepts as an identifier.
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?}: letters, digits, '_' and '-', starting with a letter")) }
}
