pub mod compose;
pub mod deb;
pub mod steps;
