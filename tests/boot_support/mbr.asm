; The boot test's disk: a BIOS boot sector (MBR) assembled with `nasm -f bin -D LAST_LBA=<n>`.
;
; It prints a marker on COM1, reads the disk's last sector (LBA LAST_LBA, where the test
; writes a fresh nonce each run) through INT 13h extended read, prints that sector as a
; NUL-terminated string, then ends the VM through QEMU's isa-debug-exit device (exit code
; 33 after a good read, 35 after a failed one). Reaching the marker proves the firmware
; loaded this sector from the volume; printing the nonce proves the data path works.
bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov [drive], dl             ; the BIOS passes the boot drive (iPXE's SAN drive, 0x80)
    mov si, marker
    call puts
    mov si, dap
    mov ah, 0x42                ; extended read, LBA from the disk address packet
    mov dl, [drive]
    int 0x13
    jc .failed
    mov si, 0x8000
    call puts
    mov al, 0x10
    out 0xf4, al                ; isa-debug-exit: QEMU exits with (0x10 << 1) | 1 = 33
.halt:
    hlt
    jmp .halt
.failed:
    mov si, read_error
    call puts
    mov al, 0x11
    out 0xf4, al                ; exit code 35
    jmp .halt

; Writes the NUL-terminated string at DS:SI to COM1, polling the transmitter-empty bit,
; with interrupts off: SeaBIOS's serial console flushes the firmware's buffered output from
; its timer interrupt, which would otherwise land in the middle of our strings.
puts:
    pushf
    cli
.next:
    lodsb
    test al, al
    jz .done
    mov bl, al
    mov dx, 0x3fd               ; line status register
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    mov al, bl
    mov dx, 0x3f8               ; transmit holding register
    out dx, al
    jmp .next
.done:
    popf
    ret

marker:     db 13, 10, "BOOTVOLUME-MBR-OK", 13, 10, 0
read_error: db 13, 10, "BOOTVOLUME-READ-FAILED", 13, 10, 0
drive:      db 0

align 4
dap:                            ; INT 13h disk address packet
    db 0x10, 0                  ; size, reserved
    dw 1                        ; sectors
    dw 0x8000, 0                ; buffer offset, segment
    dq LAST_LBA                 ; first sector

times 510 - ($ - $$) db 0
dw 0xaa55
