fn main() {
    println!("simulator: placeholder, filled by the simulator issue");
}
