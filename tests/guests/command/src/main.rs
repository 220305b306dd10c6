//! A `wasi:cli/run` command component: it exports no rule world, so every
//! slot must refuse it at load time.

fn main() {
    println!("I am a command, not a rule");
}
