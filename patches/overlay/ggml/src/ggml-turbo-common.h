// Block layouts of the TurboQuant KV-cache types turbo2, turbo3 and turbo4, shared by the
// reference code (ggml-turbo.c), the CPU kernels and the CUDA kernels.
//
// A block holds 64 consecutive values of a row: one fp16 scale d and one b-bit index per value
// into a fixed codebook (ggml-turbo-tables.h): value = d * codebook[index].
// The format and the quantizer are specified by the Rust reference,
// crates/turboquant/src/block.rs, which also generates the tables.

#pragma once

#include "ggml-common.h"

#define QK_TURBO 64

// turbo4: qs[j] = idx[j] | idx[j + 32] << 4
typedef struct {
    ggml_half d;
    uint8_t   qs[QK_TURBO / 2];
} block_turbo4;
static_assert(sizeof(block_turbo4) == sizeof(ggml_half) + QK_TURBO / 2, "wrong turbo4 block size/padding");

// turbo3: the low two bits of each index as turbo2, then qh[j] bit t = bit 2 of idx[j + 8 t]
typedef struct {
    ggml_half d;
    uint8_t   qs[QK_TURBO / 4];
    uint8_t   qh[QK_TURBO / 8];
} block_turbo3;
static_assert(sizeof(block_turbo3) == sizeof(ggml_half) + QK_TURBO / 4 + QK_TURBO / 8, "wrong turbo3 block size/padding");

// turbo2: qs[j] = idx[j] | idx[j + 16] << 2 | idx[j + 32] << 4 | idx[j + 48] << 6
typedef struct {
    ggml_half d;
    uint8_t   qs[QK_TURBO / 4];
} block_turbo2;
static_assert(sizeof(block_turbo2) == sizeof(ggml_half) + QK_TURBO / 4, "wrong turbo2 block size/padding");
