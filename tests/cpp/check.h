#pragma once
// The tiny check macros of the C++ unit tests (no test framework to download). A failed check
// prints file:line and the expression and counts; main() returns report("name").
// EXPECT, not CHECK: libtorch defines CHECK.
#include <cmath>
#include <cstdio>

static int g_failures = 0;

#define EXPECT(cond)                                                                 \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: EXPECT failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                  \
    }                                                                                \
  } while (0)

#define EXPECT_NEAR(a, b, tol)                                                                       \
  do {                                                                                               \
    const double a_ = static_cast<double>(a), b_ = static_cast<double>(b);                           \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                            \
      std::fprintf(stderr, "%s:%d: EXPECT_NEAR failed: %s = %.17g, %s = %.17g\n", __FILE__, __LINE__, \
                   #a, a_, #b, b_);                                                                  \
      ++g_failures;                                                                                  \
    }                                                                                                \
  } while (0)

inline int report(const char* name) {
  if (g_failures) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, g_failures);
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}
