pub mod dns_serve;
