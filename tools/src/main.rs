fn main() {
    println!("ringpool");
}
