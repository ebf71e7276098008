// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "MedLedger",
    products: [
        .library(name: "LMDBKit", targets: ["LMDBKit"]),
        .library(name: "LedgerCrypto", targets: ["LedgerCrypto"]),
        .library(name: "MerkleLog", targets: ["MerkleLog"]),
        .library(name: "SparseMerkle", targets: ["SparseMerkle"]),
        .library(name: "MedLedger", targets: ["MedLedger"]),
        .executable(name: "medledger", targets: ["MedLedgerCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLMDB",
            pkgConfig: "lmdb",
            providers: [.apt(["liblmdb-dev"])]
        ),
        .systemLibrary(
            name: "CCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .target(name: "CLMDBGuard", dependencies: ["CLMDB"]),
        .target(name: "CSystemShims"),
        .target(name: "LMDBKit", dependencies: ["CLMDB", "CLMDBGuard"]),
        .target(name: "LedgerCrypto", dependencies: ["CCrypto"]),
        .target(name: "MerkleLog", dependencies: ["LMDBKit", "LedgerCrypto"]),
        .target(name: "SparseMerkle", dependencies: ["LMDBKit", "LedgerCrypto"]),
        .target(name: "MedLedger", dependencies: ["CSystemShims", "LMDBKit", "LedgerCrypto", "MerkleLog", "SparseMerkle"]),
        .executableTarget(
            name: "MedLedgerCLI",
            dependencies: [
                "MedLedger", "MerkleLog", "LedgerCrypto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Helpers shared by the test targets (seeded random generator).
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        // The writer the crash test kills (Tests/MedLedgerCLITests/CrashTests.swift).
        .executableTarget(name: "crash-writer", dependencies: ["MedLedger", "LedgerCrypto", "TestSupport"], path: "Tests/CrashWriter"),
        .testTarget(name: "LMDBKitTests", dependencies: ["LMDBKit"]),
        .testTarget(name: "LedgerCryptoTests", dependencies: ["LedgerCrypto", "TestSupport"]),
        .testTarget(name: "MerkleLogTests", dependencies: ["MerkleLog", "LedgerCrypto", "LMDBKit", "TestSupport"]),
        .testTarget(name: "SparseMerkleTests", dependencies: ["SparseMerkle", "LedgerCrypto", "LMDBKit", "TestSupport"]),
        .testTarget(name: "MedLedgerTests", dependencies: ["MedLedger", "MerkleLog", "LedgerCrypto", "SparseMerkle", "LMDBKit", "TestSupport"]),
        .testTarget(name: "MedLedgerCLITests", dependencies: ["MedLedgerCLI", "MedLedger", "LedgerCrypto", "TestSupport"]),
    ]
)
