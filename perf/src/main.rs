fn main() {
    println!("ringperf");
}
