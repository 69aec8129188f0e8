// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "portforward",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "portforward", targets: ["portforward"]),
        // For Benchmarks/ and Fuzz/ (packages of their own, so that `swift build` here needs neither
        // package-benchmark nor libFuzzer).
        .library(name: "PortForwardKit", targets: ["PortForward", "HTTP2", "Reactor", "SPDY", "WebSocket", "TLS"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // C layer: the system libraries and the Linux calls Swift's Glibc module leaves out.
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CSSL", pkgConfig: "libssl", providers: [.apt(["libssl-dev"])]),
        .target(name: "CLinuxShim"),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // The reactor: one thread, completion-style operations, epoll and io_uring backends.
        .target(name: "Reactor", dependencies: ["CLinuxShim", "CURing"]),
        // HTTP/2 over libnghttp2: the session (no I/O, testable in memory) and the connection that
        // drives it through the reactor.
        .target(name: "HTTP2", dependencies: ["CNGHTTP2", "CLinuxShim", "Reactor"]),
        // TLS (OpenSSL 3 on memory BIOs): the contexts, the client's handshake, and the pump that
        // moves ciphertext between a socket and OpenSSL, plaintext between OpenSSL and a socketpair.
        .target(name: "TLS", dependencies: ["CSSL", "CLinuxShim", "Reactor"]),
        // WebSocket (RFC 6455) and the Kubernetes channel protocol: framing only, no I/O, so that any
        // connection can drive it and the tests can run it in memory. SHA-1 comes from libcrypto.
        .target(name: "WebSocket", dependencies: ["CCrypto"]),
        // SPDY/3.1 (kubectl's port-forward): frames, zlib header blocks, the session and the
        // portforward.k8s.io stream pairing; no I/O, like the HTTP/2 session.
        .target(name: "SPDY", dependencies: ["CZlib"]),
        // The port-forward protocol, the relay and the client.
        .target(name: "PortForward", dependencies: ["Reactor", "HTTP2", "SPDY", "WebSocket", "TLS", "CLinuxShim", "CNGHTTP2",
                                                    .product(name: "Yams", package: "Yams")]),
        // The load generator behind `portforward bench`: relay protocol clients, target servers, reports.
        .target(name: "Bench", dependencies: ["Reactor", "HTTP2", "PortForward", "CLinuxShim", "CNGHTTP2",
                                              .product(name: "Histogram", package: "hdrhistogram-swift")]),
        .executableTarget(name: "portforward", dependencies: [
            "PortForward", "HTTP2", "Reactor", "Bench", "TLS",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "ReactorTests", dependencies: ["Reactor", "CLinuxShim"]),
        // The child process ReactorTests start where a test must run out of descriptors.
        .executableTarget(name: "reactor-probe", dependencies: ["Reactor", "CLinuxShim"], path: "Tests/ReactorProbe"),
        // Tests mirror modules; EndToEndTests drive the built binary as real processes.
        .testTarget(name: "HTTP2Tests", dependencies: ["HTTP2", "CNGHTTP2"]),
        .testTarget(name: "WebSocketTests", dependencies: ["WebSocket", "CCrypto"]),
        .testTarget(name: "SPDYTests", dependencies: ["SPDY", "CZlib"]),
        .testTarget(name: "PortForwardTests", dependencies: ["PortForward", "HTTP2", "Reactor"]),
        .testTarget(name: "EndToEndTests", dependencies: ["PortForward", "Reactor", "CLinuxShim", "TLS"]),
        .testTarget(name: "BenchTests", dependencies: ["Bench", "PortForward"]),
    ]
)
