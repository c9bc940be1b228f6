// MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are C macros that Swift cannot import.
// These functions return them as values.
#ifndef SURA_CMPI_SHIM_H
#define SURA_CMPI_SHIM_H
#include <mpi.h>

MPI_Comm sura_mpi_comm_world(void);
MPI_Comm sura_mpi_comm_null(void);
MPI_Datatype sura_mpi_float(void);
MPI_Datatype sura_mpi_byte(void);
MPI_Datatype sura_mpi_int(void);
MPI_Op sura_mpi_sum(void);
MPI_Op sura_mpi_max(void);
MPI_Request sura_mpi_request_null(void);
MPI_Status *sura_mpi_status_ignore(void);
int sura_mpi_any_source(void);
int sura_mpi_success(void);
int sura_mpi_thread_multiple(void);
int sura_mpi_thread_funneled(void);

#endif
