// swift-tools-version: 6.1
// Benchmarks live in their own package so the library's build and CI never compile the
// benchmark tool. `swift package benchmark` runs the ordo-one suite; `swift run -c release
// ledger-bench` runs the scenario runner that prints figures with their same-run limits.
import PackageDescription

let package = Package(
    name: "MedLedgerBenchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "MedLedger", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", exact: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .target(
            name: "BenchSupport",
            dependencies: [
                .product(name: "MedLedger", package: "MedLedger"),
                .product(name: "MerkleLog", package: "MedLedger"),
                .product(name: "SparseMerkle", package: "MedLedger"),
                .product(name: "LMDBKit", package: "MedLedger"),
                .product(name: "LedgerCrypto", package: "MedLedger"),
            ],
            path: "Sources/BenchSupport"
        ),
        .executableTarget(
            name: "ledger-bench",
            dependencies: ["BenchSupport"],
            path: "Sources/ledger-bench"
        ),
        .executableTarget(
            name: "MedLedgerBenchmarks",
            dependencies: [
                "BenchSupport",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/MedLedgerBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
