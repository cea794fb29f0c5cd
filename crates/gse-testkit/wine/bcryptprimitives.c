/* bcryptprimitives.dll for wine 8 (Debian bookworm's), which lacks it.
 *
 * Rust's std on Windows draws its random numbers (HashMap keys) from
 * ProcessPrng in bcryptprimitives.dll; wine added that DLL in 9.x. The
 * platform tests build this stand-in with MinGW and put it beside the
 * agent they run under wine: ProcessPrng over RtlGenRandom
 * (advapi32!SystemFunction036), which wine has. Not shipped; real Windows
 * (8 and later) has the DLL. */
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG len);
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
