//! `gatehouse-mock [--port N] [--capture]`: runs the mock upstream until killed; prints its base
//! URL. With `--capture` it keeps the requests it receives, listed at `GET /mock/captured`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port: u16 = 0;
    let mut capture = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            "--capture" => capture = true,
            _ => {}
        }
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("http://{}/v1", listener.local_addr()?);
    gatehouse_mock::serve(listener, capture).await
}
