// Tables of the turbo2/turbo3/turbo4 KV-cache types.
// Generated from the Rust reference (crates/turboquant/src/block.rs); do not edit.
// Regenerate: cargo run -p turboquant --example ggml_tables > patches/overlay/ggml/src/ggml-turbo-tables.h

#pragma once

// the same tables in device memory for the CUDA kernels
#if defined(__CUDACC__)
#define TURBO_TABLE static const __device__ float
#else
#define TURBO_TABLE static const float
#endif

#define TURBO_SCALE_CANDIDATES 16
#define TURBO_MIN_MAGNITUDE 1e-30f

// candidate scales as fractions of the block's largest magnitude, and their inverses
TURBO_TABLE turbo_scale_grid[16] = { 0.5f, 0.54f, 0.58f, 0.62f, 0.65999997f, 0.7f, 0.74f, 0.78f, 0.82f, 0.86f, 0.9f, 0.94f, 0.98f, 1.02f, 1.06f, 1.0999999f };
TURBO_TABLE turbo_scale_grid_inv[16] = { 2.0f, 1.8518518f, 1.724138f, 1.6129032f, 1.5151516f, 1.4285715f, 1.3513514f, 1.2820513f, 1.2195122f, 1.1627907f, 1.1111112f, 1.0638298f, 1.0204082f, 0.98039216f, 0.9433963f, 0.909091f };

// turbo2: 4 levels (Lloyd-Max for N(0,1), largest level 1)
TURBO_TABLE turbo2_codebook[4] = { -1.0f, -0.29977143f, 0.29977143f, 1.0f };
TURBO_TABLE turbo2_boundaries[3] = { -0.6498857f, 0.0f, 0.6498857f };
TURBO_TABLE turbo2_codebook_x16[16] = { -1.0f, -0.29977143f, 0.29977143f, 1.0f, -1.0f, -0.29977143f, 0.29977143f, 1.0f, -1.0f, -0.29977143f, 0.29977143f, 1.0f, -1.0f, -0.29977143f, 0.29977143f, 1.0f };

// turbo3: 8 levels (Lloyd-Max for N(0,1), largest level 1)
TURBO_TABLE turbo3_codebook[8] = { -1.0f, -0.6245089f, -0.35131243f, -0.113894224f, 0.113894224f, 0.35131243f, 0.6245089f, 1.0f };
TURBO_TABLE turbo3_boundaries[7] = { -0.8122544f, -0.4879107f, -0.23260333f, 0.0f, 0.23260333f, 0.4879107f, 0.8122544f };
TURBO_TABLE turbo3_codebook_x16[16] = { -1.0f, -0.6245089f, -0.35131243f, -0.113894224f, 0.113894224f, 0.35131243f, 0.6245089f, 1.0f, -1.0f, -0.6245089f, -0.35131243f, -0.113894224f, 0.113894224f, 0.35131243f, 0.6245089f, 1.0f };

// turbo4: 16 levels (Lloyd-Max for N(0,1), largest level 1)
TURBO_TABLE turbo4_codebook[16] = { -1.0f, -0.7571635f, -0.5921293f, -0.45972186f, -0.34485254f, -0.24034312f, -0.14200753f, -0.046986576f, 0.046986576f, 0.14200753f, 0.24034312f, 0.34485254f, 0.45972186f, 0.5921293f, 0.7571635f, 1.0f };
TURBO_TABLE turbo4_boundaries[15] = { -0.87858176f, -0.6746464f, -0.5259256f, -0.4022872f, -0.29259783f, -0.19117533f, -0.094497055f, 0.0f, 0.094497055f, 0.19117533f, 0.29259783f, 0.4022872f, 0.5259256f, 0.6746464f, 0.87858176f };
TURBO_TABLE turbo4_codebook_x16[16] = { -1.0f, -0.7571635f, -0.5921293f, -0.45972186f, -0.34485254f, -0.24034312f, -0.14200753f, -0.046986576f, 0.046986576f, 0.14200753f, 0.24034312f, 0.34485254f, 0.45972186f, 0.5921293f, 0.7571635f, 1.0f };

