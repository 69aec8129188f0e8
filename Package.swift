// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "portforward",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "portforward", targets: ["portforward"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        // C layer: the system libraries and the Linux calls Swift's Glibc module leaves out.
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        .target(name: "CSystem"),
        // The reactor: one thread, completion-style operations, epoll and io_uring backends.
        .target(name: "Reactor", dependencies: ["CSystem", "CURing"]),
        // HTTP/2 sessions over libnghttp2: no I/O of their own.
        .target(name: "HTTP2", dependencies: ["CNGHTTP2", "CSystem", "Reactor"]),
        // The port-forward protocol, the relay and the client.
        .target(name: "PortForward", dependencies: ["Reactor", "HTTP2", "CSystem", "CNGHTTP2",
                                                    .product(name: "Yams", package: "Yams")]),
        .executableTarget(name: "portforward", dependencies: [
            "PortForward", "Reactor",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "ReactorTests", dependencies: ["Reactor", "CSystem"]),
        .testTarget(name: "PortForwardTests", dependencies: ["PortForward", "HTTP2", "Reactor"]),
        .testTarget(name: "EndToEndTests", dependencies: ["PortForward", "Reactor", "CSystem"]),
    ]
)
