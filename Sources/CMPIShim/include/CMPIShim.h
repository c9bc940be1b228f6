// MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are C macros that Swift cannot import.
// These functions return them as values.
#ifndef SURA_CMPI_SHIM_H
#define SURA_CMPI_SHIM_H
#include <mpi.h>

MPI_Comm sura_mpi_comm_world(void);
MPI_Comm sura_mpi_comm_null(void);
MPI_Datatype sura_mpi_float(void);
MPI_Datatype sura_mpi_double(void);
MPI_Datatype sura_mpi_byte(void);
MPI_Datatype sura_mpi_int(void);
MPI_Op sura_mpi_sum(void);
MPI_Op sura_mpi_max(void);
MPI_Op sura_mpi_min(void);
MPI_Request sura_mpi_request_null(void);
MPI_Message sura_mpi_message_null(void);
MPI_Status *sura_mpi_status_ignore(void);
MPI_Errhandler sura_mpi_errors_return(void);
void *sura_mpi_in_place(void);
int sura_mpi_any_source(void);
int sura_mpi_undefined(void);
int sura_mpi_success(void);
int sura_mpi_err_truncate(void);
int sura_mpi_max_error_string(void);
int sura_mpi_thread_multiple(void);
int sura_mpi_thread_funneled(void);
int sura_mpi_thread_serialized(void);
int sura_mpi_comm_type_shared(void);

#endif
