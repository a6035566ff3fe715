/* A stand-in for Windows 10's bcryptprimitives.dll, for running classify.exe under Wine 8
 * (Debian 12), which lacks it: Rust's standard library imports ProcessPrng from it for
 * its random numbers (HashMap keys). ProcessPrng fills the buffer from RtlGenRandom
 * (advapi32's SystemFunction036), which Wine has. Built by deploy/windows/wine-test.sh
 * with mingw-w64 and placed beside the exe; never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
